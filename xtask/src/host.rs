//! Which engine boots Ferrovisor on this host, and why.
//!
//! Ferrovisor runs guests under VT-x or AMD SVM. QEMU+KVM offers either at
//! full speed, but only *nested*: an Intel CPU with the `vmx` flag and
//! `kvm_intel` loaded with `nested` on, or an AMD CPU with the `svm` flag
//! and `kvm_amd` loaded with `nested` on, and in both cases a `/dev/kvm`
//! this user can open. A `/dev/kvm` alone proves nothing (some hosts have
//! a paravirtual one that cannot run ordinary guests). Everywhere else
//! Bochs, which emulates VT-x with EPT, is the engine that can run the
//! VT-x tests; QEMU TCG (`--engine qemu`) emulates SVM with nested paging,
//! on request. The facts are read once by [`HostFacts::probe`]; the
//! decision in [`choose`] is pure, so each branch is unit tested.

use std::fmt;
use std::fs;
use std::io::ErrorKind;

use crate::runner::{Engine, TcgCpu};

const CPUINFO: &str = "/proc/cpuinfo";
const DEV_KVM: &str = "/dev/kvm";
const INTEL: &str = "GenuineIntel";
const AMD: &str = "AuthenticAMD";

/// What the user asked for with `--engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// QEMU+KVM when this host offers nested VT-x or SVM, else Bochs.
    Auto,
    /// Exactly this engine.
    Engine(Engine),
}

impl Request {
    /// Parses `auto`, `qemu`, `qemu-icount`, `qemu-novirt`, `kvm` or
    /// `bochs`.
    pub fn parse(s: &str) -> Result<Request, String> {
        match s {
            "auto" => Ok(Request::Auto),
            "qemu" => Ok(Request::Engine(Engine::Qemu(TcgCpu::Svm))),
            "qemu-novirt" => Ok(Request::Engine(Engine::Qemu(TcgCpu::NoVirtualization))),
            "qemu-icount" => Ok(Request::Engine(Engine::Qemu(TcgCpu::SvmCounted))),
            "kvm" => Ok(Request::Engine(Engine::Kvm)),
            "bochs" => Ok(Request::Engine(Engine::Bochs)),
            other => Err(format!(
                "--engine takes auto, qemu, qemu-icount, qemu-novirt, kvm or bochs, not {other:?}"
            )),
        }
    }
}

/// The state of `/dev/kvm` for this user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevKvm {
    /// It exists and opens read-write.
    Usable,
    /// It does not exist.
    Missing,
    /// It exists but does not open read-write; the text says why.
    Denied(String),
}

/// The `nested` parameter of the KVM module for this host's CPU
/// (`kvm_intel` on Intel, `kvm_amd` on AMD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nested {
    /// The module is loaded with nested virtualization on (`Y` or `1`).
    On,
    /// The module is loaded with it off; holds what the parameter reads.
    Off(String),
    /// The parameter file is absent: the module is not loaded.
    NotLoaded,
}

/// The virtualization extension KVM nests on a host, by CPU vendor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// Intel VT-x, through `kvm_intel`.
    Vmx,
    /// AMD SVM, through `kvm_amd`.
    Svm,
}

impl Extension {
    /// The extension a CPU of `vendor` offers, if it is one KVM nests.
    pub fn of_vendor(vendor: &str) -> Option<Extension> {
        match vendor {
            INTEL => Some(Extension::Vmx),
            AMD => Some(Extension::Svm),
            _ => None,
        }
    }

    /// The KVM module that runs it.
    pub fn module(self) -> &'static str {
        match self {
            Extension::Vmx => "kvm_intel",
            Extension::Svm => "kvm_amd",
        }
    }

    /// The module's `nested` parameter file.
    pub fn nested_path(self) -> &'static str {
        match self {
            Extension::Vmx => "/sys/module/kvm_intel/parameters/nested",
            Extension::Svm => "/sys/module/kvm_amd/parameters/nested",
        }
    }

    /// Its name in the messages.
    fn name(self) -> &'static str {
        match self {
            Extension::Vmx => "VT-x",
            Extension::Svm => "SVM",
        }
    }

    /// Its flag in /proc/cpuinfo.
    fn flag(self) -> &'static str {
        match self {
            Extension::Vmx => "vmx",
            Extension::Svm => "svm",
        }
    }

    /// The vendor whose CPUs offer it.
    fn vendor(self) -> &'static str {
        match self {
            Extension::Vmx => INTEL,
            Extension::Svm => AMD,
        }
    }
}

/// The facts about this host that decide whether QEMU+KVM can offer nested
/// VT-x or SVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// `vendor_id` from /proc/cpuinfo (`GenuineIntel`, `AuthenticAMD`), if any.
    pub vendor: Option<String>,
    /// Whether the first `flags` line of /proc/cpuinfo lists `vmx`.
    pub vmx: bool,
    /// Whether the first `flags` line of /proc/cpuinfo lists `svm`.
    pub svm: bool,
    /// The `nested` parameter of the vendor's KVM module (`kvm_intel` or
    /// `kvm_amd`; [`Nested::NotLoaded`] for another vendor).
    pub nested: Nested,
    /// Whether `/dev/kvm` can be used.
    pub dev_kvm: DevKvm,
}

impl HostFacts {
    /// Reads the facts from this machine: /proc/cpuinfo, then the `nested`
    /// parameter of the KVM module for its vendor. Unreadable sources count
    /// as absent, so the answer errs towards Bochs.
    pub fn probe() -> HostFacts {
        let cpuinfo = fs::read_to_string(CPUINFO).unwrap_or_default();
        let extension = cpuinfo_field(&cpuinfo, "vendor_id").and_then(Extension::of_vendor);
        let nested = extension.and_then(|e| fs::read_to_string(e.nested_path()).ok());
        let dev_kvm = match fs::OpenOptions::new().read(true).write(true).open(DEV_KVM) {
            Ok(_) => DevKvm::Usable,
            Err(e) if e.kind() == ErrorKind::NotFound => DevKvm::Missing,
            Err(e) => DevKvm::Denied(e.to_string()),
        };
        HostFacts::from_sources(&cpuinfo, nested.as_deref(), dev_kvm)
    }

    /// Builds the facts from the text of /proc/cpuinfo, the text of the
    /// vendor's KVM module's `nested` parameter (`None` when the file is
    /// absent) and the state of `/dev/kvm`.
    pub fn from_sources(cpuinfo: &str, nested: Option<&str>, dev_kvm: DevKvm) -> HostFacts {
        let vendor = cpuinfo_field(cpuinfo, "vendor_id")
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let has_flag = |flag: &str| {
            cpuinfo_field(cpuinfo, "flags")
                .is_some_and(|flags| flags.split_whitespace().any(|f| f == flag))
        };
        let nested = match nested.map(str::trim) {
            None => Nested::NotLoaded,
            Some("Y" | "y" | "1") => Nested::On,
            Some(other) => Nested::Off(other.to_string()),
        };
        HostFacts {
            vendor,
            vmx: has_flag("vmx"),
            svm: has_flag("svm"),
            nested,
            dev_kvm,
        }
    }

    /// The extension QEMU+KVM can offer nested, or the first condition
    /// that keeps it from offering one.
    fn kvm_extension(&self) -> Result<Extension, Blocker> {
        let vendor = self.vendor.as_deref();
        let Some(extension) = vendor.and_then(Extension::of_vendor) else {
            return Err(Blocker::Vendor(vendor.map(str::to_string)));
        };
        let listed = match extension {
            Extension::Vmx => self.vmx,
            Extension::Svm => self.svm,
        };
        if !listed {
            return Err(Blocker::NoFlag(extension));
        }
        match &self.nested {
            Nested::On => {}
            Nested::NotLoaded => return Err(Blocker::NotLoaded(extension)),
            Nested::Off(value) => return Err(Blocker::NestedOff(extension, value.clone())),
        }
        match &self.dev_kvm {
            DevKvm::Usable => Ok(extension),
            DevKvm::Missing => Err(Blocker::NoDevKvm),
            DevKvm::Denied(why) => Err(Blocker::DevKvmDenied(why.clone())),
        }
    }
}

/// The value of the first `key: value` line of `cpuinfo`. Keys are matched
/// whole: recent kernels also print a `vmx flags` line, which is not the
/// `flags` line.
fn cpuinfo_field<'a>(cpuinfo: &'a str, key: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Why QEMU+KVM cannot offer nested VT-x or SVM on this host.
enum Blocker {
    Vendor(Option<String>),
    NoFlag(Extension),
    NotLoaded(Extension),
    NestedOff(Extension, String),
    NoDevKvm,
    DevKvmDenied(String),
}

impl fmt::Display for Blocker {
    /// The failed condition, then in brackets how to fix it or, where the
    /// hardware rules it out, what Bochs offers instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SLOW: &str = "(Bochs emulates VT-x, slowly)";
        match self {
            Blocker::Vendor(Some(vendor)) => write!(
                f,
                "this host's CPU is {vendor}, so QEMU+KVM can offer neither nested VT-x nor nested SVM {SLOW}"
            ),
            Blocker::Vendor(None) => write!(
                f,
                "{CPUINFO} names no CPU vendor, so QEMU+KVM cannot be trusted to offer nested VT-x or SVM {SLOW}"
            ),
            Blocker::NoFlag(e) => write!(
                f,
                "this {vendor} CPU does not list the {flag} flag in {CPUINFO} ({name} is off in the firmware, or \
                 this is a virtual machine without nested {name}), so QEMU+KVM cannot offer {name} {SLOW}",
                vendor = e.vendor(),
                flag = e.flag(),
                name = e.name(),
            ),
            Blocker::NotLoaded(e) => write!(
                f,
                "the {module} module is not loaded ({path} does not exist; load it with: \
                 sudo modprobe {module} nested=1)",
                module = e.module(),
                path = e.nested_path(),
            ),
            Blocker::NestedOff(e, value) => write!(
                f,
                "{module} nested virtualization is off (cat {path} prints {value}; enable with: \
                 sudo modprobe -r {module} && sudo modprobe {module} nested=1)",
                module = e.module(),
                path = e.nested_path(),
            ),
            Blocker::NoDevKvm => write!(f, "{DEV_KVM} does not exist (is KVM enabled in this kernel?)"),
            Blocker::DevKvmDenied(why) => write!(
                f,
                "{DEV_KVM} cannot be opened read-write by this user ({why}; join the kvm group with: \
                 sudo usermod -aG kvm $USER, then log in again)"
            ),
        }
    }
}

/// The engine to use and the reason, printed before the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The engine.
    pub engine: Engine,
    /// One line saying why this engine (`requested` when the user named it).
    pub reason: String,
}

/// Decides the engine for `request` on a host with `facts`.
///
/// `auto` picks QEMU+KVM only when every condition for nested VT-x (on
/// Intel) or nested SVM (on AMD) holds, and otherwise Bochs, naming the
/// condition that failed. An explicit `kvm` on a host that fails one is an
/// error with the same explanation.
pub fn choose(request: Request, facts: &HostFacts) -> Result<Choice, String> {
    match (request, facts.kvm_extension()) {
        (Request::Auto, Ok(e)) => Ok(Choice {
            engine: Engine::Kvm,
            reason: format!(
                "using QEMU+KVM: this {vendor} CPU has {name}, {module} nested virtualization is on \
                 and /dev/kvm is usable",
                vendor = e.vendor(),
                name = e.name(),
                module = e.module(),
            ),
        }),
        (Request::Auto, Err(why)) => Ok(Choice { engine: Engine::Bochs, reason: format!("using Bochs: {why}") }),
        (Request::Engine(Engine::Kvm), Err(why)) => Err(format!(
            "QEMU+KVM is not usable on this host: {why}; use --engine bochs (VT-x), or --engine qemu \
             (SVM, emulated by TCG)"
        )),
        (Request::Engine(engine), _) => Ok(Choice { engine, reason: "requested".into() }),
    }
}

/// [`choose`] for a request as typed on the command line.
pub fn choose_str(request: &str, facts: &HostFacts) -> Result<Choice, String> {
    choose(Request::parse(request)?, facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Intel host with VT-x, as a recent kernel prints it (note the
    /// separate `vmx flags` line).
    const INTEL_VMX: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 154
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch ept vpid ept_ad
vmx flags\t: vnmi preemption_timer posted_intr invvpid ept_x_only ept_ad ept_1gb flexpriority apicv tsc_offset vtpr mtf vapic ept vpid unrestricted_guest vapic_reg vid ple shadow_vmcs ept_mode_based_exec tsc_scaling usr_wait_pause

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae
";

    /// An AMD host: SVM, no VMX.
    const AMD_SVM: &str = "\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf pni pclmulqdq monitor ssse3 fma cx16 pcid sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext npt lbrv svm_lock nrip_save
";

    /// An AMD virtual machine whose hypervisor does not pass SVM through.
    const AMD_NO_SVM: &str = "\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext
";

    /// An Intel virtual machine whose hypervisor does not pass VT-x through.
    const INTEL_NO_VMX: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm avx512f
";

    fn auto(facts: &HostFacts) -> Choice {
        choose(Request::Auto, facts).expect("auto always chooses")
    }

    #[test]
    fn reads_vendor_and_the_flags_line_not_vmx_flags() {
        let facts = HostFacts::from_sources(INTEL_VMX, Some("Y\n"), DevKvm::Usable);
        assert_eq!(facts.vendor.as_deref(), Some("GenuineIntel"));
        assert!(facts.vmx);
        assert_eq!(facts.nested, Nested::On);
        // `vmx` only in the `vmx flags` line does not count; `svm` is not `vmx`.
        let only_vmx_flags =
            "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse\nvmx flags\t: vmx ept\n";
        assert!(!HostFacts::from_sources(only_vmx_flags, Some("Y"), DevKvm::Usable).vmx);
        let amd = HostFacts::from_sources(AMD_SVM, None, DevKvm::Usable);
        assert!(!amd.vmx && amd.svm);
        assert_eq!(amd.vendor.as_deref(), Some("AuthenticAMD"));
        assert!(!facts.svm);
        // `svm_lock` and `nrip_save` are not `svm`.
        let no_svm = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu svm_lock nrip_save npt\n";
        assert!(!HostFacts::from_sources(no_svm, None, DevKvm::Usable).svm);
    }

    #[test]
    fn nested_parameter_values() {
        let nested = |text| HostFacts::from_sources(INTEL_VMX, text, DevKvm::Usable).nested;
        assert_eq!(nested(Some("Y\n")), Nested::On);
        assert_eq!(nested(Some("1\n")), Nested::On);
        assert_eq!(nested(Some("N\n")), Nested::Off("N".into()));
        assert_eq!(nested(Some("0")), Nested::Off("0".into()));
        assert_eq!(nested(None), Nested::NotLoaded);
    }

    #[test]
    fn auto_picks_kvm_when_every_condition_holds() {
        let choice = auto(&HostFacts::from_sources(
            INTEL_VMX,
            Some("Y\n"),
            DevKvm::Usable,
        ));
        assert_eq!(choice.engine, Engine::Kvm);
        assert_eq!(
            choice.reason,
            "using QEMU+KVM: this GenuineIntel CPU has VT-x, kvm_intel nested virtualization is on \
             and /dev/kvm is usable"
        );
        let explicit = choose(
            Request::Engine(Engine::Kvm),
            &HostFacts::from_sources(INTEL_VMX, Some("1"), DevKvm::Usable),
        );
        assert_eq!(
            explicit,
            Ok(Choice {
                engine: Engine::Kvm,
                reason: "requested".into()
            })
        );
    }

    #[test]
    fn amd_with_nested_svm_gets_kvm() {
        let facts = HostFacts::from_sources(AMD_SVM, Some("1\n"), DevKvm::Usable);
        assert!(facts.svm && !facts.vmx);
        let choice = auto(&facts);
        assert_eq!(choice.engine, Engine::Kvm);
        assert_eq!(
            choice.reason,
            "using QEMU+KVM: this AuthenticAMD CPU has SVM, kvm_amd nested virtualization is on \
             and /dev/kvm is usable"
        );
        assert_eq!(
            choose_str("kvm", &facts),
            Ok(Choice {
                engine: Engine::Kvm,
                reason: "requested".into()
            })
        );
        // `Y` reads as on too.
        let y = HostFacts::from_sources(AMD_SVM, Some("Y"), DevKvm::Usable);
        assert_eq!(auto(&y).engine, Engine::Kvm);
    }

    #[test]
    fn amd_without_kvm_amd_or_nested_gets_bochs_with_the_fix() {
        let facts = HostFacts::from_sources(AMD_SVM, None, DevKvm::Usable);
        let choice = auto(&facts);
        assert_eq!(choice.engine, Engine::Bochs);
        assert_eq!(
            choice.reason,
            "using Bochs: the kvm_amd module is not loaded (/sys/module/kvm_amd/parameters/nested \
             does not exist; load it with: sudo modprobe kvm_amd nested=1)"
        );
        let err = choose_str("kvm", &facts).unwrap_err();
        assert!(err.contains("the kvm_amd module is not loaded"), "{err}");
        assert!(err.contains("--engine bochs"), "{err}");
        assert!(
            err.contains("--engine qemu (SVM, emulated by TCG)"),
            "{err}"
        );

        let off = HostFacts::from_sources(AMD_SVM, Some("0\n"), DevKvm::Usable);
        assert_eq!(
            auto(&off).reason,
            "using Bochs: kvm_amd nested virtualization is off (cat /sys/module/kvm_amd/parameters/nested \
             prints 0; enable with: sudo modprobe -r kvm_amd && sudo modprobe kvm_amd nested=1)"
        );
    }

    #[test]
    fn amd_without_svm_or_dev_kvm_gets_bochs() {
        let choice = auto(&HostFacts::from_sources(
            AMD_NO_SVM,
            Some("1"),
            DevKvm::Usable,
        ));
        assert_eq!(choice.engine, Engine::Bochs);
        assert_eq!(
            choice.reason,
            "using Bochs: this AuthenticAMD CPU does not list the svm flag in /proc/cpuinfo (SVM is off \
             in the firmware, or this is a virtual machine without nested SVM), so QEMU+KVM cannot \
             offer SVM (Bochs emulates VT-x, slowly)"
        );
        let missing = auto(&HostFacts::from_sources(
            AMD_SVM,
            Some("1"),
            DevKvm::Missing,
        ));
        assert_eq!(missing.engine, Engine::Bochs);
        assert!(
            missing.reason.contains("/dev/kvm does not exist"),
            "{}",
            missing.reason
        );
        let denied = HostFacts::from_sources(
            AMD_SVM,
            Some("1"),
            DevKvm::Denied("Permission denied".into()),
        );
        assert_eq!(auto(&denied).engine, Engine::Bochs);
        assert!(choose_str("kvm", &denied).is_err());
    }

    /// The vendor decides which extension counts: an Intel CPU that lists
    /// only `svm`, or an AMD one that lists only `vmx`, gets no KVM.
    #[test]
    fn the_flag_must_match_the_vendor() {
        let intel_svm = "vendor_id\t: GenuineIntel\nflags\t\t: fpu svm\n";
        let choice = auto(&HostFacts::from_sources(
            intel_svm,
            Some("Y"),
            DevKvm::Usable,
        ));
        assert_eq!(choice.engine, Engine::Bochs);
        assert!(
            choice.reason.contains("does not list the vmx flag"),
            "{}",
            choice.reason
        );
        let amd_vmx = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu vmx\n";
        let choice = auto(&HostFacts::from_sources(amd_vmx, Some("Y"), DevKvm::Usable));
        assert_eq!(choice.engine, Engine::Bochs);
        assert!(
            choice.reason.contains("does not list the svm flag"),
            "{}",
            choice.reason
        );
    }

    #[test]
    fn another_vendor_gets_bochs() {
        let centaur = "vendor_id\t: CentaurHauls\nflags\t\t: fpu vmx svm\n";
        let choice = auto(&HostFacts::from_sources(centaur, Some("Y"), DevKvm::Usable));
        assert_eq!(choice.engine, Engine::Bochs);
        assert_eq!(
            choice.reason,
            "using Bochs: this host's CPU is CentaurHauls, so QEMU+KVM can offer neither nested VT-x \
             nor nested SVM (Bochs emulates VT-x, slowly)"
        );
    }

    #[test]
    fn intel_without_vmx_gets_bochs() {
        let choice = auto(&HostFacts::from_sources(INTEL_NO_VMX, None, DevKvm::Usable));
        assert_eq!(choice.engine, Engine::Bochs);
        assert!(
            choice.reason.contains("does not list the vmx flag"),
            "{}",
            choice.reason
        );
    }

    #[test]
    fn unknown_vendor_gets_bochs() {
        let choice = auto(&HostFacts::from_sources("", Some("Y"), DevKvm::Usable));
        assert_eq!(choice.engine, Engine::Bochs);
        assert!(
            choice.reason.contains("names no CPU vendor"),
            "{}",
            choice.reason
        );
    }

    #[test]
    fn kvm_intel_not_loaded_or_nested_off_gets_bochs_with_the_fix() {
        let choice = auto(&HostFacts::from_sources(INTEL_VMX, None, DevKvm::Usable));
        assert_eq!(choice.engine, Engine::Bochs);
        assert!(
            choice.reason.contains("kvm_intel module is not loaded"),
            "{}",
            choice.reason
        );
        assert!(
            choice.reason.contains("modprobe kvm_intel nested=1"),
            "{}",
            choice.reason
        );

        let facts = HostFacts::from_sources(INTEL_VMX, Some("N\n"), DevKvm::Usable);
        assert_eq!(
            auto(&facts).reason,
            "using Bochs: kvm_intel nested virtualization is off (cat /sys/module/kvm_intel/parameters/nested \
             prints N; enable with: sudo modprobe -r kvm_intel && sudo modprobe kvm_intel nested=1)"
        );
        assert!(choose_str("kvm", &facts)
            .unwrap_err()
            .contains("nested virtualization is off"));
    }

    #[test]
    fn dev_kvm_missing_or_denied_gets_bochs() {
        let missing = auto(&HostFacts::from_sources(
            INTEL_VMX,
            Some("Y"),
            DevKvm::Missing,
        ));
        assert_eq!(missing.engine, Engine::Bochs);
        assert!(
            missing.reason.contains("/dev/kvm does not exist"),
            "{}",
            missing.reason
        );

        let denied = HostFacts::from_sources(
            INTEL_VMX,
            Some("Y"),
            DevKvm::Denied("Permission denied".into()),
        );
        let choice = auto(&denied);
        assert_eq!(choice.engine, Engine::Bochs);
        assert!(
            choice.reason.contains("cannot be opened read-write"),
            "{}",
            choice.reason
        );
        assert!(
            choice.reason.contains("usermod -aG kvm"),
            "{}",
            choice.reason
        );
        assert!(choose_str("kvm", &denied).is_err());
    }

    #[test]
    fn qemu_and_bochs_are_always_accepted() {
        let facts = HostFacts::from_sources(AMD_SVM, None, DevKvm::Missing);
        for (name, engine) in [
            ("qemu", Engine::Qemu(TcgCpu::Svm)),
            ("qemu-novirt", Engine::Qemu(TcgCpu::NoVirtualization)),
            ("qemu-icount", Engine::Qemu(TcgCpu::SvmCounted)),
            ("bochs", Engine::Bochs),
        ] {
            assert_eq!(
                choose_str(name, &facts),
                Ok(Choice {
                    engine,
                    reason: "requested".into()
                })
            );
        }
    }

    #[test]
    fn unknown_requests_are_refused() {
        let facts = HostFacts::from_sources(INTEL_VMX, Some("Y"), DevKvm::Usable);
        let err = choose_str("vmware", &facts).unwrap_err();
        assert_eq!(
            err,
            "--engine takes auto, qemu, qemu-icount, qemu-novirt, kvm or bochs, not \"vmware\""
        );
    }
}
