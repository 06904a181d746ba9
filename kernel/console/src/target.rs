//! [`MonitorTarget`]: what the monitor needs from the running hypervisor,
//! and the plain data it returns. The kernel implements the trait over
//! its guests, scheduler and log; the host tests implement it over a
//! fake. All formatting of this data is in [`crate::exec`].

use alloc::string::String;
use alloc::vec::Vec;

use crate::command::LogLevel;

/// A guest's run state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestState {
    /// Its vCPUs are scheduled.
    Running,
    /// Paused from the monitor: state kept, not scheduled.
    Paused,
    /// Stopped (by itself, a fault or the monitor); its memory is freed.
    Stopped,
    /// Being built or booted again.
    Starting,
}

impl GuestState {
    /// The state as `list` shows it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
        }
    }
}

/// One row of `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSummary {
    /// The configured name.
    pub name: String,
    /// Its run state.
    pub state: GuestState,
    /// vCPUs.
    pub vcpus: u32,
    /// The physical CPUs it may run on; empty for any.
    pub cpus: Vec<u32>,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Milliseconds since it was (re)started.
    pub uptime_ms: u64,
    /// VM exits handled in all.
    pub exits: u64,
}

/// What `info` shows beyond the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestInfo {
    /// The `list` row.
    pub summary: GuestSummary,
    /// Image format: `linux`, `multiboot` or `flat`.
    pub format: String,
    /// Kernel image path in the config partition.
    pub kernel: String,
    /// Initial ramdisk path, if any.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
    /// Why it last stopped, if it has.
    pub last_stop: Option<String>,
    /// Times it was restarted.
    pub restarts: u32,
    /// Console output bytes dropped because its ring was full.
    pub console_dropped: u64,
}

/// A segment register as the VMCS holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u32,
    /// Access rights (VMCS format: type, S, DPL, P, AVL, L, D/B, G,
    /// unusable in bit 16).
    pub access: u32,
}

/// The names of [`RegisterSnapshot::gprs`], in order (the x86 register
/// numbering).
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// A vCPU's registers, read while it is not running.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterSnapshot {
    /// General-purpose registers in x86 numbering: see [`GPR_NAMES`].
    pub gprs: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// CS.
    pub cs: Segment,
    /// DS.
    pub ds: Segment,
    /// ES.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// SS.
    pub ss: Segment,
    /// TR.
    pub tr: Segment,
    /// LDTR.
    pub ldtr: Segment,
    /// GDTR base and limit.
    pub gdtr: (u64, u32),
    /// IDTR base and limit.
    pub idtr: (u64, u32),
}

/// Why guest memory could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemError {
    /// Part of the range is not guest RAM; `ram` says where RAM is, for
    /// the message.
    OutOfRange {
        /// The guest's RAM.
        ram: addr::RamLayout,
    },
    /// The guest has no memory now (stopped, starting).
    NoMemory,
    /// Anything else, said in words.
    Other(String),
}

/// A guest's VM exits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Exits in all.
    pub total: u64,
    /// Count per reason (the reason's name), in any order.
    pub by_reason: Vec<(String, u64)>,
}

/// One physical CPU's figures for `stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// The CPU's number as numbered at boot.
    pub cpu: u32,
    /// Thousandths of its time spent in guests.
    pub guest_permille: u32,
    /// Guest switches on it.
    pub switches: u64,
}

/// Host figures for `stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Milliseconds since boot.
    pub uptime_ms: u64,
    /// Each CPU that runs guests.
    pub cpus: Vec<CpuStats>,
    /// Free physical memory in bytes.
    pub free_memory: u64,
    /// Usable physical memory in bytes.
    pub total_memory: u64,
    /// The largest free block in bytes: with the free memory, how
    /// fragmented it is (a guest's RAM is made of naturally aligned
    /// blocks, the larger the better for its page tables).
    pub largest_free: u64,
    /// Console output bytes dropped, all sources together.
    pub console_dropped: u64,
    /// Console input bytes dropped.
    pub input_dropped: u64,
}

/// What the monitor acts on. Guest names are checked against
/// [`guests`](Self::guests) before any other method is called with one,
/// but a guest can go away in between: methods answer for a name they do
/// not know with `None` or an error, never a panic.
pub trait MonitorTarget {
    /// Every guest, in boot order.
    fn guests(&self) -> Vec<GuestSummary>;
    /// One guest's details.
    fn info(&self, guest: &str) -> Option<GuestInfo>;
    /// vCPU `vcpu` of `guest`'s registers; an error in words (no such
    /// vCPU, the guest is running and could not be stopped to read them).
    fn regs(&mut self, guest: &str, vcpu: u32) -> Result<RegisterSnapshot, String>;
    /// Fills `buf` from `guest`'s memory at `gpa`: all of it or an error.
    fn read_memory(&mut self, guest: &str, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// `guest`'s exits by reason.
    fn exits(&self, guest: &str) -> Option<ExitCounts>;
    /// `guest`'s recent console output, raw, oldest byte first (the
    /// replay tail of its output ring).
    fn log(&self, guest: &str) -> Option<Vec<u8>>;
    /// Stops scheduling `guest`'s vCPUs, keeping their state.
    fn pause(&mut self, guest: &str) -> Result<(), String>;
    /// Schedules a paused `guest` again.
    fn resume(&mut self, guest: &str) -> Result<(), String>;
    /// Stops `guest` for good.
    fn stop(&mut self, guest: &str) -> Result<(), String>;
    /// Stops `guest` if it runs, then boots it again from its images.
    fn restart(&mut self, guest: &str) -> Result<(), String>;
    /// Host figures.
    fn stats(&self) -> HostStats;
    /// Sets the most detailed log level printed.
    fn set_log_level(&mut self, level: LogLevel) -> Result<(), String>;
    /// Starts powering off (after this command's answer is printed).
    fn poweroff(&mut self);
}
