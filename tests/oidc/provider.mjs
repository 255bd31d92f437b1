// A real OpenID Connect provider for the login tests: oidc-provider with the
// device authorization grant, authorization code + PKCE for a native
// (loopback) client, refresh tokens and token revocation, served over HTTPS.
//
// Usage: node provider.mjs PORT CERT_PEM KEY_PEM
// Any login name signs in with the password "pw" (the provider's own dev
// login page); the account's groups are "oncall" plus, for "bob", "dba".
// Prints "ready <issuer>" once listening.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { createRequire } from 'node:module';

const require = createRequire(process.env.OIDC_PROVIDER_MODULES + '/');
const { default: Provider } = await import(require.resolve('oidc-provider'));

const [port, certFile, keyFile] = process.argv.slice(2);
const issuer = `https://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'rolemint-cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: [
      'urn:ietf:params:oauth:grant-type:device_code',
      'authorization_code',
      'refresh_token',
    ],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  }],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
  },
  claims: { openid: ['sub'], groups: ['groups'] },
  scopes: ['openid', 'offline_access', 'groups'],
  conformIdTokenClaims: false,
  ttl: { IdToken: 600, AccessToken: 600, DeviceCode: 300 },
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, groups: id === 'bob' ? ['oncall', 'dba'] : ['oncall'] };
      },
    };
  },
  async loadExistingGrant(ctx) {
    // Consent is not what these tests are about: every client gets the
    // scopes and claims it asked for, once signed in.
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid offline_access groups');
    grant.addOIDCClaims(['groups']);
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

const server = https.createServer(
  { cert: readFileSync(certFile), key: readFileSync(keyFile) },
  provider.callback(),
);
server.listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
process.on('SIGTERM', () => process.exit(0));
