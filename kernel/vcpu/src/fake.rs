//! A backend and a machine made of plain fields, for driving the
//! vendor-neutral exit handlers without hardware: the host tests, the
//! fuzz target and (later) the run loop's tests use them. A [`FakeVcpu`]
//! is the architectural state a real backend would keep in its VMCS or
//! VMCB, with no fixed bits and no failures unless asked for.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use addr::GuestPhysAddr;

use super::access::{Event, Gpr, Segment, SegmentState, VcpuAccess};
use super::cpuid::CpuidResult;
use super::exit::Platform;

/// The error a [`FakeVcpu`] reports once `fail` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeError;

impl fmt::Display for FakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the fake backend was told to fail")
    }
}

/// A vCPU as fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeVcpu {
    /// The GPRs by encoding.
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0, CR3, CR4 and EFER as the guest sees them.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// The segment registers, in [`Segment`] order.
    pub segments: [SegmentState; 8],
    /// The length of the instruction that exited.
    pub instruction_len: u64,
    /// The STI/MOV SS shadow.
    pub shadow: bool,
    /// Blocking by NMI (inside an NMI handler).
    pub nmi_blocked: bool,
    /// Events injected, in order.
    pub injected: Vec<Event>,
    /// CR2.
    pub cr2: u64,
    /// Whether an interrupt window is requested.
    pub window: bool,
    /// The TSC offset.
    pub tsc_offset: u64,
    /// CR4 bits refused.
    pub cr4_forbidden: u64,
    /// The PAE PDPTEs last installed.
    pub pdptes: Option<[u64; 4]>,
    /// Every access fails with [`FakeError`] while set.
    pub fail: bool,
}

fn segment_index(seg: Segment) -> usize {
    match seg {
        Segment::Es => 0,
        Segment::Cs => 1,
        Segment::Ss => 2,
        Segment::Ds => 3,
        Segment::Fs => 4,
        Segment::Gs => 5,
        Segment::Ldtr => 6,
        Segment::Tr => 7,
    }
}

impl FakeVcpu {
    /// A 64-bit guest at CPL 0 (CR0.PE/PG, EFER.LME/LMA, CS.L) stopped at
    /// `rip` on an instruction of `len` bytes.
    pub fn long_mode(rip: u64, len: u64) -> Self {
        let mut v = FakeVcpu {
            rip,
            rflags: 0x2,
            cr0: 0x8000_0031,
            efer: (1 << 8) | (1 << 10),
            instruction_len: len,
            ..FakeVcpu::default()
        };
        v.segments[1].attributes = 0xA09B;
        v.segments[2].attributes = 0xC093;
        v
    }

    fn check(&self) -> Result<(), FakeError> {
        if self.fail {
            Err(FakeError)
        } else {
            Ok(())
        }
    }
}

impl VcpuAccess for FakeVcpu {
    type Error = FakeError;

    fn gpr(&self, reg: Gpr) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.gprs.get(reg as usize).copied().unwrap_or(0))
    }

    fn set_gpr(&mut self, reg: Gpr, value: u64) -> Result<(), FakeError> {
        self.check()?;
        if let Some(slot) = self.gprs.get_mut(reg as usize) {
            *slot = value;
        }
        Ok(())
    }

    fn rip(&self) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.rip)
    }

    fn set_rip(&mut self, value: u64) -> Result<(), FakeError> {
        self.check()?;
        self.rip = value;
        Ok(())
    }

    fn rflags(&self) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.rflags)
    }

    fn skip_instruction(&mut self) -> Result<(), FakeError> {
        self.check()?;
        let long = self.efer & (1 << 10) != 0 && self.segments[1].attributes & (1 << 13) != 0;
        self.rip = self.rip.wrapping_add(self.instruction_len);
        if !long {
            self.rip &= 0xFFFF_FFFF;
        }
        self.shadow = false;
        Ok(())
    }

    fn clear_interrupt_shadow(&mut self) -> Result<(), FakeError> {
        self.check()?;
        self.shadow = false;
        Ok(())
    }

    fn cr0(&self) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.cr0)
    }

    fn cr3(&self) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.cr3)
    }

    fn cr4(&self) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.cr4)
    }

    fn efer(&self) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.efer)
    }

    fn set_cr0(&mut self, value: u64) -> Result<(), FakeError> {
        self.check()?;
        self.cr0 = value;
        Ok(())
    }

    fn set_cr4(&mut self, value: u64) -> Result<(), FakeError> {
        self.check()?;
        self.cr4 = value;
        Ok(())
    }

    fn set_cr3(&mut self, value: u64) -> Result<(), FakeError> {
        self.check()?;
        self.cr3 = value;
        Ok(())
    }

    fn set_pdptes(&mut self, pdptes: [u64; 4]) -> Result<(), FakeError> {
        self.check()?;
        self.pdptes = Some(pdptes);
        Ok(())
    }

    fn set_efer(&mut self, value: u64) -> Result<(), FakeError> {
        self.check()?;
        self.efer = value;
        Ok(())
    }

    fn cr4_forbidden(&self) -> u64 {
        self.cr4_forbidden
    }

    fn segment_attributes(&self, seg: Segment) -> Result<u32, FakeError> {
        Ok(self.segment(seg)?.attributes)
    }

    fn segment(&self, seg: Segment) -> Result<SegmentState, FakeError> {
        self.check()?;
        Ok(self
            .segments
            .get(segment_index(seg))
            .copied()
            .unwrap_or_default())
    }

    fn inject(&mut self, event: Event) -> Result<(), FakeError> {
        self.check()?;
        self.injected.push(event);
        Ok(())
    }

    fn set_cr2(&mut self, value: u64) -> Result<(), FakeError> {
        self.check()?;
        self.cr2 = value;
        Ok(())
    }

    fn event_pending(&self) -> Result<bool, FakeError> {
        self.check()?;
        Ok(false)
    }

    fn request_interrupt_window(&mut self, on: bool) -> Result<(), FakeError> {
        self.check()?;
        self.window = on;
        Ok(())
    }

    fn interrupt_shadow(&self) -> Result<bool, FakeError> {
        self.check()?;
        Ok(self.shadow)
    }

    fn nmi_blocked(&self) -> Result<bool, FakeError> {
        self.check()?;
        Ok(self.nmi_blocked)
    }

    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), FakeError> {
        self.check()?;
        self.tsc_offset = offset;
        Ok(())
    }

    fn tsc_offset(&self) -> Result<u64, FakeError> {
        self.check()?;
        Ok(self.tsc_offset)
    }
}

/// A machine with a small RAM, a fixed host CPUID and XSAVE for x87, SSE
/// and AVX.
#[derive(Clone, Debug, Default)]
pub struct FakePlatform {
    /// Guest RAM from guest-physical 0.
    pub ram: Vec<u8>,
    /// Console lines printed.
    pub lines: Vec<String>,
    /// The XCR0 last loaded.
    pub xcr0: Option<u64>,
    /// TLB flushes asked for.
    pub flushes: u32,
    /// The guest's clock.
    pub now: u64,
}

impl Platform for FakePlatform {
    fn host_cpuid(&self, leaf: u32, _subleaf: u32) -> CpuidResult {
        match leaf {
            0 => CpuidResult {
                eax: 0xD,
                ebx: 0x756E_6547,
                ecx: 0x6C65_746E,
                edx: 0x4965_6E69,
            },
            1 => CpuidResult {
                eax: 0x5_0654,
                ebx: 0,
                ecx: u32::MAX,
                edx: u32::MAX,
            },
            0x8000_0000 => CpuidResult {
                eax: 0x8000_0008,
                ..CpuidResult::default()
            },
            // SYSCALL, execute-disable, Intel 64.
            0x8000_0001 => CpuidResult {
                edx: (1 << 11) | (1 << 20) | (1 << 29),
                ..CpuidResult::default()
            },
            // 39 physical, 48 linear address bits.
            0x8000_0008 => CpuidResult {
                eax: 0x3027,
                ..CpuidResult::default()
            },
            _ => CpuidResult::default(),
        }
    }

    fn xcr0_supported(&self) -> u64 {
        0b111
    }

    fn load_xcr0(&mut self, value: u64) {
        self.xcr0 = Some(value);
    }

    fn read_guest(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(gpa.as_u64()) else {
            return false;
        };
        let Some(end) = start.checked_add(buf.len()) else {
            return false;
        };
        match self.ram.get(start..end) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    fn write_guest(&mut self, gpa: GuestPhysAddr, bytes: &[u8]) -> bool {
        let Ok(start) = usize::try_from(gpa.as_u64()) else {
            return false;
        };
        let Some(end) = start.checked_add(bytes.len()) else {
            return false;
        };
        match self.ram.get_mut(start..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    fn ram(&self) -> addr::RamLayout {
        // The fake's RAM is a few pages from 0.
        addr::RamLayout::new(self.ram.len() as u64).unwrap_or_default()
    }

    fn guest_line(&mut self, line: &str) {
        self.lines.push(line.into());
    }

    fn flush_guest_tlb(&mut self) {
        self.flushes = self.flushes.saturating_add(1);
    }

    fn now(&self) -> u64 {
        self.now
    }
}
