# The tutorial's policy for the app persona: read credentials of role
# `readonly`, nothing else.
path "database/creds/readonly" {
  capabilities = ["read"]
}
