//! The vendor-neutral exit handlers from arbitrary exits and register
//! values, on the fake backend: every exit ends in an outcome (no panic),
//! RIP moves only forward by at most one instruction (15 bytes) or not at
//! all, and a stop always has a reason that prints.
#![no_main]

use addr::GuestPhysAddr;
use libfuzzer_sys::fuzz_target;
use vcpu::access::{Gpr, Segment};
use vcpu::exit::{
    handle_exit, AddressSize, CrAccess, CrAccessKind, Exit, IoAccess, IoDirection, NestedFault,
    Outcome, VcpuModel,
};
use vcpu::fake::{FakePlatform, FakeVcpu};
use vcpu::vm::VmDevices;

/// Reads little-endian integers off the input, zero past its end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | (u64::from(self.u8()) << (8 * i)))
    }
}

fn exit(b: &mut Bytes<'_>) -> Exit {
    let gpr = |n: u8| Gpr::from_number(n % 16).unwrap_or(Gpr::Rax);
    match b.u8() % 23 {
        0 => Exit::Cpuid,
        1 => Exit::Io(IoAccess {
            port: b.u64() as u16,
            size: [1, 2, 4][usize::from(b.u8() % 3)],
            direction: if b.u8() & 1 == 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            // INS/OUTS, with and without REP, through any segment and
            // address size: the string I/O emulation walks the guest's
            // page tables in the RAM below.
            string: b.u8() & 1 == 1,
            rep: b.u8() & 1 == 1,
            address_size: [
                AddressSize::Bits16,
                AddressSize::Bits32,
                AddressSize::Bits64,
            ][usize::from(b.u8() % 3)],
            segment: [
                Segment::Es,
                Segment::Cs,
                Segment::Ss,
                Segment::Ds,
                Segment::Fs,
                Segment::Gs,
            ][usize::from(b.u8() % 6)],
        }),
        2 => Exit::MsrRead,
        3 => Exit::MsrWrite,
        4 => Exit::Hypercall,
        5 => Exit::Hlt,
        6 => {
            let flags = b.u8();
            Exit::nested(NestedFault {
                gpa: GuestPhysAddr::new(b.u64()),
                read: flags & 1 != 0,
                write: flags & 2 != 0,
                fetch: flags & 4 != 0,
                allowed: None,
            })
        }
        7 => Exit::NestedPagingMisconfigured { gpa: b.u64() },
        8 => Exit::InterruptWindow,
        9 => Exit::ExternalInterrupt,
        10 => Exit::Nmi,
        11 => Exit::SliceEnd,
        12 => Exit::TripleFault,
        13 => {
            let cr = b.u8() % 10;
            let kind = match b.u8() % 4 {
                0 => CrAccessKind::MovTo(gpr(b.u8())),
                1 => CrAccessKind::MovFrom(gpr(b.u8())),
                2 => CrAccessKind::Lmsw(b.u64() as u16),
                _ => CrAccessKind::Clts,
            };
            Exit::ControlRegister(CrAccess { cr, kind })
        }
        14 => Exit::Xsetbv,
        15 => Exit::CacheFlush,
        16 => Exit::VirtualizationInstruction,
        17 => Exit::Rdpmc,
        18 => Exit::TaskSwitch,
        19 => Exit::EntryFailed {
            reason: b.u64() as u32,
            qualification: b.u64(),
        },
        20 => Exit::Pause,
        21 => Exit::NmiWindow,
        _ => Exit::Unknown {
            reason: b.u64() as u32,
            qualification: b.u64(),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut vcpu = FakeVcpu::long_mode(b.u64(), u64::from(b.u8() % 16));
    for r in vcpu.gprs.iter_mut() {
        *r = b.u64();
    }
    vcpu.rflags = b.u64();
    vcpu.cr0 = b.u64();
    vcpu.cr3 = b.u64();
    vcpu.cr4 = b.u64();
    vcpu.efer = b.u64();
    vcpu.segments[1].attributes = b.u64() as u32;
    vcpu.segments[1].base = b.u64();
    vcpu.segments[2].attributes = b.u64() as u32;
    // The data segments string I/O goes through.
    for seg in [0, 3, 4, 5] {
        vcpu.segments[seg].base = b.u64();
        vcpu.segments[seg].limit = b.u64() as u32;
        vcpu.segments[seg].attributes = b.u64() as u32;
    }
    vcpu.cr4_forbidden = 1 << 13;
    let mut platform = FakePlatform {
        ram: vec![0; 64 << 10],
        now: b.u64(),
        ..FakePlatform::default()
    };
    // Guest RAM from the input, for page walks and printing.
    let ram_bytes = usize::from(b.u8()) * 256;
    for slot in platform.ram.iter_mut().take(ram_bytes) {
        *slot = b.u8();
    }
    let mut model = VcpuModel::new(0, 1, 1_000_000_000);
    let mut devices = VmDevices::new(1_000_000_000, vcpu::vm::WallClock::default());
    // Several exits in a row, as a vCPU takes them.
    for _ in 0..4 {
        let exit = exit(&mut b);
        let rip = vcpu.rip;
        let outcome = handle_exit(&exit, &mut vcpu, &mut model, &mut devices, &mut platform);
        let moved = vcpu.rip.wrapping_sub(rip);
        // Forward by at most one instruction (15 bytes), wrapping at 4 GiB
        // outside 64-bit mode.
        assert!(
            moved <= 15 || (moved & 0xFFFF_FFFF) <= 15,
            "RIP moved by {moved:#x}"
        );
        if outcome == Outcome::Yield {
            assert_eq!(vcpu.rip, rip, "a yield leaves RIP on the PAUSE");
        }
        if let Outcome::Stop(reason) = outcome {
            assert!(!reason.to_string().is_empty());
            break;
        }
    }
});
