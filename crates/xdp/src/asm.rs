//! Just enough of an eBPF assembler for palisade's programs: instructions
//! encoded as the kernel reads them, and jumps to named labels resolved
//! once the program is complete (so that no offset is counted by hand).

/// Opcodes used here (class | size or operation | source).
pub mod op {
    /// `dst = *(u32 *)(src + off)`
    pub const LDX_W: u8 = 0x61;
    /// `dst = *(u16 *)(src + off)`
    pub const LDX_H: u8 = 0x69;
    /// `dst = *(u64 *)(src + off)`
    pub const LDX_DW: u8 = 0x79;
    /// `*(u32 *)(dst + off) = src`
    pub const STX_W: u8 = 0x63;
    /// `*(u16 *)(dst + off) = src`
    pub const STX_H: u8 = 0x6b;
    /// `*(u64 *)(dst + off) = src`
    pub const STX_DW: u8 = 0x7b;
    /// `*(u32 *)(dst + off) = imm`
    pub const ST_W: u8 = 0x62;
    /// `dst = src` (64 bits)
    pub const MOV_X: u8 = 0xbf;
    /// `dst = imm` (64 bits)
    pub const MOV_K: u8 = 0xb7;
    /// `dst += imm` (64 bits)
    pub const ADD_K: u8 = 0x07;
    /// `dst &= imm` (64 bits)
    pub const AND_K: u8 = 0x57;
    /// `dst -= src` (64 bits)
    pub const SUB_X: u8 = 0x1f;
    /// `dst %= imm` (32 bits)
    pub const MOD32_K: u8 = 0x94;
    /// `dst = htobe(dst)`, the width in bits in the immediate
    pub const TO_BE: u8 = 0xdc;
    /// `goto off`
    pub const JA: u8 = 0x05;
    /// `if dst == imm goto off`
    pub const JEQ_K: u8 = 0x15;
    /// `if dst != imm goto off`
    pub const JNE_K: u8 = 0x55;
    /// `if dst > src goto off` (unsigned)
    pub const JGT_X: u8 = 0x2d;
    /// `if dst >= src goto off` (unsigned)
    pub const JGE_X: u8 = 0x3d;
    /// `call imm` (a helper function)
    pub const CALL: u8 = 0x85;
    /// `return r0`
    pub const EXIT: u8 = 0x95;
    /// `dst = imm64` over two instructions; with source register
    /// [`PSEUDO_MAP_FD`](super::PSEUDO_MAP_FD), `imm` is a map's descriptor.
    pub const LD_DW: u8 = 0x18;
}

/// Source register value of [`op::LD_DW`] that makes the kernel read the
/// immediate as a map's file descriptor (`BPF_PSEUDO_MAP_FD`).
pub const PSEUDO_MAP_FD: u8 = 1;

/// Registers by name: `R0` results, `R1`..`R5` arguments (clobbered by
/// calls), `R6`..`R9` kept across calls, `R10` the frame pointer.
pub mod reg {
    #![allow(missing_docs)]
    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R3: u8 = 3;
    pub const R4: u8 = 4;
    pub const R5: u8 = 5;
    pub const R6: u8 = 6;
    pub const R7: u8 = 7;
    pub const R8: u8 = 8;
    pub const FP: u8 = 10;
}

/// One instruction, as the kernel reads it.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | dst;
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// A program being written: instructions, labels, and the jumps still
/// waiting for their label.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<[u8; 8]>,
    labels: Vec<(&'static str, usize)>,
    jumps: Vec<(usize, &'static str)>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Appends one instruction.
    pub fn i(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(insn(code, dst, src, off, imm));
        self
    }

    /// Appends a jump (`code` one of the jump opcodes) to `label`.
    pub fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, label: &'static str) -> &mut Asm {
        self.jumps.push((self.insns.len(), label));
        self.i(code, dst, src, 0, imm)
    }

    /// `dst = ` the map whose descriptor is `fd` (two instructions).
    pub fn load_map(&mut self, dst: u8, fd: i32) -> &mut Asm {
        self.i(op::LD_DW, dst, PSEUDO_MAP_FD, 0, fd);
        self.i(0, 0, 0, 0, 0)
    }

    /// Names the next instruction.
    pub fn label(&mut self, name: &'static str) -> &mut Asm {
        assert!(
            self.labels.iter().all(|(n, _)| *n != name),
            "label {name} defined twice"
        );
        self.labels.push((name, self.insns.len()));
        self
    }

    /// The program's bytes, every jump pointing at its label.
    ///
    /// # Panics
    /// On a jump to a label that was never defined or out of reach: a
    /// mistake in the program's source, never in its input.
    pub fn finish(mut self) -> Vec<u8> {
        for &(at, name) in &self.jumps {
            let target = self
                .labels
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("jump to undefined label {name}"))
                .1;
            let off = i16::try_from(target as i64 - at as i64 - 1).expect("jump within reach");
            self.insns[at][2..4].copy_from_slice(&off.to_le_bytes());
        }
        self.insns.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_point_at_their_labels() {
        let mut a = Asm::new();
        a.jump(op::JA, 0, 0, 0, "end");
        a.i(op::MOV_K, 0, 0, 0, 1);
        a.load_map(reg::R1, 7);
        a.label("end");
        a.i(op::EXIT, 0, 0, 0, 0);
        let p = a.finish();
        assert_eq!(p.len(), 5 * 8);
        // From instruction 0 over three to instruction 4.
        assert_eq!(i16::from_le_bytes([p[2], p[3]]), 3);
        // The map load: source register 1, the descriptor as immediate.
        assert_eq!(p[16 + 1], (PSEUDO_MAP_FD << 4) | reg::R1);
        assert_eq!(i32::from_le_bytes(p[20..24].try_into().unwrap()), 7);
    }
}
