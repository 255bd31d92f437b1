//! The startup packet parser and the startup parameter allowlist: any
//! bytes give a packet or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rolemint::proxy::session::handshake::Startup;
use rolemint::pg::backend::params;
use rolemint::proxy::session::wire;

fuzz_target!(|data: &[u8]| {
    if let Some(word) = data.first_chunk::<4>() {
        let _ = wire::startup_packet_len(*word);
    }
    if let Ok(wire::StartupPacket::Startup { minor, params }) = wire::parse_startup_packet(data) {
        if let Ok(startup) = Startup::from_params(minor, params) {
            // What passes the allowlist is only allowed settings.
            for (name, _) in &startup.forward {
                assert!(name == "options" || params::is_allowed(name), "{name}");
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(options) = params::filter_options(text) {
            // Filtering is idempotent: what it lets through passes again.
            assert_eq!(params::filter_options(&options).as_deref(), Ok(options.as_str()));
        }
    }
});
