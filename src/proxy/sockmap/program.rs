//! The verdict program, as instructions: every segment that arrives on a
//! spliced socket is sent out of its peer.
//!
//! ```text
//! r6 = r1                                  ; the skb
//! r0 = bpf_get_socket_cookie(r6)           ; the socket it arrived on
//! *(u64 *)(r10 - 8) = r0                   ; the key, on the stack
//! r0 = bpf_sk_redirect_hash(r6, map, r10 - 8, 0)  ; to the peer's egress
//! if r0 != SK_DROP: return r0              ; SK_PASS: redirected
//! return SK_PASS                           ; no peer (being removed): keep it here
//! ```
//!
//! The map holds each socket under its *peer's* cookie, so the lookup by
//! the receiving socket's own cookie finds where its bytes go. When the
//! peer is missing the segment stays on the socket it arrived on rather
//! than being dropped: TCP has already acknowledged it, so dropping would
//! lose data silently.

use libbpf_sys::bpf_insn;

/// `BPF_FUNC_get_socket_cookie`.
const GET_SOCKET_COOKIE: i32 = 46;
/// `BPF_FUNC_sk_redirect_hash`.
const SK_REDIRECT_HASH: i32 = 72;
/// `BPF_PSEUDO_MAP_FD`: the immediate of a 64-bit load is a map's fd.
const PSEUDO_MAP_FD: u8 = 1;
const SK_PASS: i32 = 1;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    let mut i = bpf_insn {
        code,
        off,
        imm,
        ..Default::default()
    };
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i
}

/// The program, its map load pointing at `map_fd`.
pub fn verdict(map_fd: i32) -> Vec<bpf_insn> {
    // Opcodes: class | op | source, as in linux/bpf_common.h.
    const MOV64_REG: u8 = 0x07 | 0xb0 | 0x08; // BPF_ALU64 | BPF_MOV | BPF_X
    const MOV64_IMM: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
    const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
    const STX_DW: u8 = 0x03 | 0x60 | 0x18; // BPF_STX | BPF_MEM | BPF_DW
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    vec![
        insn(MOV64_REG, 6, 1, 0, 0),
        insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE),
        insn(STX_DW, 10, 0, -8, 0),
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_REG, 3, 10, 0, 0),
        insn(ADD64_IMM, 3, 0, 0, -8),
        insn(MOV64_IMM, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, SK_REDIRECT_HASH),
        insn(JNE_IMM, 0, 0, 1, 0),
        insn(MOV64_IMM, 0, 0, 0, SK_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_loads_the_map_it_is_given_and_always_exits() {
        let p = verdict(42);
        assert_eq!(p.len(), 13);
        let load = &p[4];
        assert_eq!(
            (load.code, load.dst_reg(), load.src_reg(), load.imm),
            (0x18, 2, 1, 42)
        );
        // The second half of the 64-bit load is all zero.
        assert_eq!((p[5].code, p[5].imm), (0, 0));
        assert_eq!(p.last().map(|i| i.code), Some(0x95));
        // The branch skips exactly the fallback: r0 stays SK_PASS either way.
        assert_eq!((p[10].code, p[10].off), (0x55, 1));
        assert_eq!((p[11].code, p[11].imm), (0xb7, SK_PASS));
    }
}
