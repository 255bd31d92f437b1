//! The token path: splitting a JWT into header, claims and signature and
//! verifying it, through the public `Verifier::verify`. Any string is
//! refused or accepted, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rolemint::config::Config;
use rolemint::auth::identity::Verifier;

const CONFIG: &str = r#"
[proxy]
listen = "127.0.0.1:0"
allow_plaintext = true

[backend]
host = "127.0.0.1"
admin_user = "rolemint_admin"
admin_password = "unused"

[auth]
issuer = "rolemint-fuzz"
audience = "rolemint"
hs256_secret = "fuzz-secret-0123456789abcdef0123456789"

[roles]
"#;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = Config::parse(CONFIG).expect("fuzz config parses");
        Verifier::from_config(&config.auth).expect("fuzz verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = verifier().verify(&token);
});
