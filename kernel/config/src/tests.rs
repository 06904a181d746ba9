//! Tests of `hypervisor.toml` parsing and validation, through the public
//! API: what the operator writes in, what the console prints out.

use super::*;
use alloc::string::ToString;
use alloc::vec;

const FILE: &str = "hypervisor.toml";

/// A realistic configuration: a Linux guest with an initrd, a Multiboot
/// guest, a flat real-mode test guest and a format-detected one.
const EXAMPLE: &str = r#"# Ferrovisor configuration: settings, then one [[guest]] per guest.

[hypervisor]
log_level = "debug"
slice_ms = 5
console_hotkey = "ctrl-a"
on_guest_stop = "restart"
power_off_when_all_stopped = false

[[guest]]
name = "linux"
kernel = "linux/bzImage"
initrd = "/linux/initramfs.cpio"   # a leading '/' means the same
cmdline = "console=ttyS0,115200 nolapic"
memory = "128M"
vcpus = 1
cpus = [0, 1]
format = "linux"

[[guest]]
name = "mb-test"
kernel = "tests/multiboot.elf"
memory = 16_777_216
format = "multiboot"

[[guest]]
name = "hello_real"
kernel = 'tests/hello.bin'
memory = "1MiB"
format = "flat"
load_address = 0x7c00
entry = 0x7c00
mode = "real"

[[guest]]
name = "detect"
kernel = "other.img"
memory = "1G"
"#;

fn parsed(text: &str) -> ParseOutcome {
    parse(FILE, text)
}

/// The console lines of all errors.
fn lines(outcome: &ParseOutcome) -> Vec<String> {
    outcome.errors.iter().map(ToString::to_string).collect()
}

/// The console line of the one error `text` gives.
fn only_error(text: &str) -> String {
    let outcome = parsed(text);
    assert_eq!(outcome.errors.len(), 1, "errors: {:#?}", lines(&outcome));
    outcome.errors[0].to_string()
}

fn names(outcome: &ParseOutcome) -> Vec<&str> {
    outcome
        .config
        .guests
        .iter()
        .map(|g| g.name.as_str())
        .collect()
}

fn at(line: u32, column: u32) -> Position {
    Position { line, column }
}

/// A valid guest table with `extra` lines added.
fn guest(name: &str, extra: &str) -> String {
    format!("[[guest]]\nname = \"{name}\"\nkernel = \"bzImage\"\nmemory = \"64M\"\n{extra}")
}

#[test]
fn full_example_parses_to_the_expected_config() {
    let outcome = parsed(EXAMPLE);
    assert_eq!(lines(&outcome), Vec::<String>::new());
    let config = &outcome.config;
    assert_eq!(
        config.hypervisor,
        HypervisorSettings {
            log_level: LogLevel::Debug,
            slice_ms: 5,
            console_hotkey: values::parse_hotkey("ctrl-a").unwrap(),
            on_guest_stop: GuestStopAction::Restart,
            power_off_when_all_stopped: false,
        }
    );
    assert_eq!(config.hypervisor.console_hotkey.byte(), 0x01);
    assert_eq!(
        names(&outcome),
        ["linux", "mb-test", "hello_real", "detect"]
    );

    let linux = &config.guests[0];
    assert_eq!(
        *linux,
        GuestConfig {
            name: "linux".into(),
            kernel: "linux/bzImage".into(),
            initrd: Some("linux/initramfs.cpio".into()),
            cmdline: "console=ttyS0,115200 nolapic".into(),
            memory: 128 * MIB,
            vcpus: 1,
            cpus: Some(vec![0, 1]),
            format: Some(ImageFormat::Linux),
            source: GuestSource {
                table: at(10, 1),
                name: at(11, 1),
                kernel: at(12, 1),
                initrd: Some(at(13, 1)),
                memory: at(15, 1),
            },
        }
    );

    let mb = &config.guests[1];
    assert_eq!(mb.memory, 16 * MIB);
    assert_eq!(mb.format, Some(ImageFormat::Multiboot));
    assert_eq!(
        (
            mb.vcpus,
            &mb.cpus,
            mb.initrd.as_deref(),
            mb.cmdline.as_str()
        ),
        (1, &None, None, "")
    );

    let flat = &config.guests[2];
    assert_eq!(flat.kernel, "tests/hello.bin");
    assert_eq!(flat.memory, MIB);
    assert_eq!(
        flat.format,
        Some(ImageFormat::Flat(FlatImage {
            load_address: 0x7c00,
            entry: 0x7c00,
            mode: CpuMode::Real,
        }))
    );

    let detect = &config.guests[3];
    assert_eq!((detect.memory, detect.format), (GIB, None));
}

#[test]
fn defaults_fill_every_optional_key() {
    let outcome = parsed("[[guest]]\nname = \"a\"\nkernel = \"k\"\nmemory = \"1M\"\n");
    assert!(outcome.errors.is_empty());
    let settings = outcome.config.hypervisor;
    assert_eq!(settings, HypervisorSettings::default());
    assert_eq!(settings.log_level, LogLevel::Info);
    assert_eq!(settings.slice_ms, 10);
    assert_eq!(settings.console_hotkey.to_string(), "ctrl-a");
    assert_eq!(settings.on_guest_stop, GuestStopAction::Stop);
    assert!(settings.power_off_when_all_stopped);
    let g = &outcome.config.guests[0];
    assert_eq!(
        (
            g.vcpus,
            &g.cpus,
            g.format,
            g.initrd.as_deref(),
            g.cmdline.as_str()
        ),
        (1, &None, None, None, "")
    );

    // An empty [hypervisor] table and an empty file are defaults too.
    assert_eq!(parsed("[hypervisor]\n").config, Config::default());
    let empty = parsed("");
    assert_eq!((empty.config, empty.errors), (Config::default(), vec![]));
}

#[test]
fn comments_and_blank_lines_are_ignored() {
    let text = "\n\n# leading comment\n\n[hypervisor] # trailing\n\n  # indented\nslice_ms = 20 # ms\n\n\
                [[guest]]   # first\n# name = \"commented-out\"\nname = \"a\" # the name\n\n\nkernel = \"k\"\n\
                memory = \"1M\"\ncmdline = \"quiet # not a comment\"\n# end\n";
    let outcome = parsed(text);
    assert_eq!(lines(&outcome), Vec::<String>::new());
    assert_eq!(outcome.config.hypervisor.slice_ms, 20);
    let g = &outcome.config.guests[0];
    assert_eq!(
        (g.name.as_str(), g.cmdline.as_str()),
        ("a", "quiet # not a comment")
    );
    assert_eq!(g.source.name, at(12, 1));
}

#[test]
fn crlf_line_ends_give_the_same_config_and_positions() {
    let crlf = EXAMPLE.replace('\n', "\r\n");
    assert_eq!(parsed(&crlf).config, parsed(EXAMPLE).config);

    let bad = "[[guest]]\nname = \"web\"\nkernel = \"k\"\nmemory = \"12Q\"\n";
    let expected =
        "config: error: hypervisor.toml:4:1: guest 'web': memory \"12Q\" is not a size like 128M";
    assert_eq!(only_error(bad), expected);
    assert_eq!(only_error(&bad.replace('\n', "\r\n")), expected);

    // A syntax error at a line's end lands on the same column either way.
    let unterminated = "[[guest]]\nname = \"web\n";
    let lf = only_error(unterminated);
    assert_eq!(only_error(&unterminated.replace('\n', "\r\n")), lf);
}

#[test]
fn unterminated_string_is_fatal_with_its_position() {
    let text = format!(
        "{}\n[[guest]]\nname = \"web\nkernel = \"k\"\nmemory = \"1M\"\n",
        guest("ok", "")
    );
    let outcome = parsed(&text);
    assert_eq!(
        outcome.config,
        Config::default(),
        "a syntax error loads no guest"
    );
    assert_eq!(
        lines(&outcome),
        ["config: error: hypervisor.toml:7:12: syntax error: invalid basic string, expected `\"` \
          (no guest is loaded until the file parses)"]
    );
    // Settings are not half-applied either.
    let outcome = parsed("[hypervisor]\nslice_ms = 99\nlog_level = 'debug\n");
    assert_eq!(outcome.config.hypervisor, HypervisorSettings::default());
    assert_eq!(outcome.errors[0].position(), at(3, 19));
}

#[test]
fn a_key_defined_twice_is_a_syntax_error_naming_it() {
    assert_eq!(
        only_error(&guest("a", "memory = \"2M\"\n")),
        "config: error: hypervisor.toml:5:1: syntax error: memory is defined twice in the same \
         table; keep one (no guest is loaded until the file parses)"
    );
}

#[test]
fn unknown_top_level_table_is_an_error_and_the_rest_still_loads() {
    let text = format!("[guests]\nname = \"x\"\n\n{}", guest("a", ""));
    let outcome = parsed(&text);
    assert_eq!(
        lines(&outcome),
        ["config: error: hypervisor.toml:1:2: unknown table [guests] (did you mean [[guest]]?)"]
    );
    assert_eq!(names(&outcome), ["a"]);

    assert_eq!(
        only_error("[[guests]]\nname = \"x\"\n"),
        "config: error: hypervisor.toml:1:3: unknown table [[guests]] (did you mean [[guest]]?)"
    );
    assert_eq!(
        only_error("[network]\nmac = 1\n"),
        "config: error: hypervisor.toml:1:2: unknown table [network]; the tables are [hypervisor] and [[guest]]"
    );
    assert_eq!(
        only_error("[hypervizor]\n"),
        "config: error: hypervisor.toml:1:2: unknown table [hypervizor] (did you mean [hypervisor]?)"
    );
}

#[test]
fn keys_outside_their_table_say_where_they_belong() {
    assert_eq!(
        only_error("log_level = \"debug\"\n"),
        "config: error: hypervisor.toml:1:1: log_level must be in the [hypervisor] table; put it after a [hypervisor] line"
    );
    assert_eq!(
        only_error("\nmemory = \"1M\"\n"),
        "config: error: hypervisor.toml:2:1: memory must be in a [[guest]] table; put it after a [[guest]] line"
    );
    assert_eq!(
        only_error("colour = 1\n"),
        "config: error: hypervisor.toml:1:1: unknown top-level key \"colour\"; settings go in [hypervisor], guests in [[guest]] tables"
    );
}

#[test]
fn guest_must_be_an_array_of_tables() {
    assert_eq!(
        only_error("[guest]\nname = \"a\"\n"),
        "config: error: hypervisor.toml:1:2: write [[guest]] with two brackets: each guest is one table of the array \"guest\""
    );
    assert_eq!(
        only_error("[[hypervisor]]\n"),
        "config: error: hypervisor.toml:1:3: write [hypervisor] once, not [[hypervisor]]"
    );
    // TOML's other spelling of an array of tables is the same thing.
    let inline = parsed("guest = [{ name = \"a\", kernel = \"k\", memory = \"1M\" },\n         { name = \"b\", kernel = \"k\", memory = \"2M\" }]\n");
    assert_eq!(lines(&inline), Vec::<String>::new());
    assert_eq!(names(&inline), ["a", "b"]);
    assert_eq!(inline.config.guests[1].source.table, at(2, 10));
}

#[test]
fn bad_memory_size_names_guest_key_and_form() {
    assert_eq!(
        only_error(&format!(
            "{}\n[[guest]]\nname = \"web\"\nkernel = \"k\"\nmemory = \"12Q\"\n",
            guest("ok", "")
        )),
        "config: error: hypervisor.toml:9:1: guest 'web': memory \"12Q\" is not a size like 128M"
    );
}

#[test]
fn memory_forms_and_limits() {
    let memory_of = |value: &str| {
        let o = parsed(&format!(
            "[[guest]]\nname = \"g\"\nkernel = \"k\"\nmemory = {value}\n"
        ));
        match o.errors.first() {
            None => Ok(o.config.guests[0].memory),
            Some(e) => Err(e.message.clone()),
        }
    };
    assert_eq!(memory_of("\"512M\""), Ok(512 * MIB));
    assert_eq!(memory_of("\"2GiB\""), Ok(2 * GIB));
    assert_eq!(memory_of("\"1024KB\""), Ok(MIB));
    assert_eq!(memory_of("1_048_576"), Ok(MIB));
    assert_eq!(memory_of("0x200000"), Ok(2 * MIB));
    // RAM past 3G lies from 4G up; 15G is the most.
    assert_eq!(memory_of("\"4G\""), Ok(4 * GIB));
    assert_eq!(memory_of("\"15G\""), Ok(15 * GIB));
    assert_eq!(
        memory_of("\"16G\""),
        Err(
            "guest 'g': memory \"16G\" is above the most a guest may have, 15G (RAM past 3G lies \
             from 4G up and must end by 16G); give the guest at most \"15G\""
                .into()
        )
    );
    assert_eq!(
        memory_of("\"512K\""),
        Err(
            "guest 'g': memory \"512K\" is below the minimum of 1M; give the guest at least \"1M\""
                .into()
        )
    );
    assert_eq!(
        memory_of("1049000"),
        Err("guest 'g': memory 1049000 is not a multiple of 4K; round it to whole 4K pages".into())
    );
    assert_eq!(
        memory_of("\"512\""),
        Err("guest 'g': memory \"512\" has no unit; write \"512M\" for MiB, or an integer (no quotes) for bytes".into())
    );
    assert_eq!(
        memory_of("-5"),
        Err("guest 'g': memory -5 is negative; give a size like 128M".into())
    );
    assert_eq!(
        memory_of("\"99999999999G\""),
        Err("guest 'g': memory \"99999999999G\" is too large".into())
    );
    assert_eq!(
        memory_of("1.5"),
        Err("guest 'g': memory must be a size like \"128M\" or an integer number of bytes, not a float".into())
    );
}

#[test]
fn unknown_guest_key_suggests_the_nearest_known_key() {
    assert_eq!(
        only_error("[[guest]]\nname = \"a\"\nkernel = \"k\"\nmemory = \"1M\"\n  memroy = \"2M\"\n"),
        "config: error: hypervisor.toml:5:3: guest 'a': unknown key \"memroy\" (did you mean \"memory\"?)"
    );
    // Names other hypervisors use point to ours.
    assert!(only_error(&guest("a", "ramdisk = \"i\"\n"))
        .ends_with("unknown key \"ramdisk\" (did you mean \"initrd\"?)"));
    assert!(only_error(&guest("a", "extra = \"quiet\"\n")).ends_with("(did you mean \"cmdline\"?)"));
    // Nothing close: the list of keys.
    assert_eq!(
        only_error(&guest("a", "colour = \"red\"\n")),
        "config: error: hypervisor.toml:5:1: guest 'a': unknown key \"colour\"; the keys of [[guest]] are \
         name, kernel, initrd, cmdline, memory, vcpus, cpus, format, load_address, entry, mode"
    );
    // Dotted keys and sub-tables are keys the guest does not have.
    assert!(only_error(&guest("a", "memory_opts.huge = true\n"))
        .contains("5:1: guest 'a': unknown key \"memory_opts\""));
    assert!(only_error(&guest("a", "[guest.disk]\npath = \"x\"\n"))
        .contains("5:8: guest 'a': unknown key \"disk\""));
}

#[test]
fn flat_format_needs_its_three_keys() {
    let text = "[[guest]]\nname = \"b\"\nkernel = \"k.bin\"\nmemory = \"1M\"\nformat = \"flat\"\n";
    assert_eq!(
        only_error(text),
        "config: error: hypervisor.toml:5:1: guest 'b': format = \"flat\" needs load_address, entry and mode"
    );
    assert_eq!(
        only_error(&format!("{text}load_address = 0x1000\n")),
        "config: error: hypervisor.toml:5:1: guest 'b': format = \"flat\" needs load_address, entry and mode; add entry and mode"
    );
    // With every key present but one invalid, only that one is reported.
    assert_eq!(
        only_error(&format!("{text}load_address = 0x1000\nentry = 0x1000\nmode = \"64bit\"\n")),
        "config: error: hypervisor.toml:8:1: guest 'b': mode \"64bit\" is not one of \"real\", \"protected\" or \"long\""
    );
}

#[test]
fn flat_keys_with_another_format_are_errors() {
    let outcome = parsed(&guest(
        "c",
        "format = \"linux\"\nentry = 0x100000\nmode = \"long\"\n",
    ));
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:6:1: guest 'c': entry is only used with format = \"flat\"; set format = \"flat\" or remove entry",
            "config: error: hypervisor.toml:7:1: guest 'c': mode is only used with format = \"flat\"; set format = \"flat\" or remove mode",
        ]
    );
    assert!(outcome.config.guests.is_empty());
    // An invalid format is the only error: whether it needs the flat keys
    // is unknown.
    assert_eq!(
        only_error(&guest("c", "format = \"bin\"\nentry = 0\n")),
        "config: error: hypervisor.toml:5:1: guest 'c': format \"bin\" is not one of \"linux\", \"multiboot\" or \"flat\""
    );
    // No format at all: a flat image cannot be detected, so the same.
    assert!(only_error(&guest("c", "load_address = 0\n"))
        .contains("5:1: guest 'c': load_address is only used with format = \"flat\""));
}

#[test]
fn flat_addresses_must_be_reachable_and_inside_memory() {
    let flat = |mode: &str, load: &str, entry: &str| {
        parsed(&guest(
            "f",
            &format!(
                "format = \"flat\"\nload_address = {load}\nentry = {entry}\nmode = \"{mode}\"\n"
            ),
        ))
    };
    assert!(flat("real", "0x7c00", "0x7c00").errors.is_empty());
    assert!(flat("long", "0x200000", "0x200000").errors.is_empty());
    assert_eq!(
        lines(&flat("real", "0x100000", "0x7c00")),
        ["config: error: hypervisor.toml:6:1: guest 'f': load_address 0x100000 is not below 1M, \
          out of reach in real mode; use a lower address or another mode"]
    );
    assert_eq!(
        lines(&flat("protected", "0x100000", "0x4000000")),
        ["config: error: hypervisor.toml:7:1: guest 'f': entry 0x4000000 is outside the guest's 64M \
          of memory; use a lower address or more memory"]
    );
    assert!(lines(&flat("protected", "0x1_0000_0000", "0"))[0].contains("is not below 4G"));
    // A 4G guest's RAM past 3G lies from 4G up; the window between is not
    // RAM.
    let big = |at: &str| {
        parsed(&format!(
            "[[guest]]\nname = \"b\"\nkernel = \"k\"\nmemory = \"4G\"\nformat = \"flat\"\n\
             load_address = {at}\nentry = {at}\nmode = \"long\"\n"
        ))
    };
    assert!(big("0x1_0000_0000").errors.is_empty());
    assert!(big("0x1_3fff_f000").errors.is_empty());
    for at in ["0xc000_0000", "0x1_4000_0000"] {
        assert!(
            lines(&big(at))[0].contains("is outside the guest's 4G of memory"),
            "{at}"
        );
    }
}

#[test]
fn duplicate_name_is_rejected_naming_the_first_line() {
    let text = format!(
        "# two guests\n\n{}\n{}",
        guest("web", "cmdline = \"first\"\n"),
        guest("web", "")
    );
    let outcome = parsed(&text);
    assert_eq!(
        lines(&outcome),
        ["config: error: hypervisor.toml:10:1: duplicate guest name 'web' (first defined at line 4)"]
    );
    assert_eq!(outcome.config.guests.len(), 1);
    assert_eq!(
        outcome.config.guests[0].cmdline, "first",
        "the first one is kept"
    );
}

#[test]
fn every_kind_of_guest_takes_several_vcpus() {
    let flat = "format = \"flat\"\nload_address = 0x8000\nentry = 0x8000\nmode = \"real\"\n";
    let text = format!(
        "{}\n{}\n{}\n{}\n{}",
        guest("linux", "vcpus = 4\nformat = \"linux\"\n"),
        guest("mb", "vcpus = 2\nformat = \"multiboot\"\ncpus = [0]\n"),
        guest("flat", &format!("vcpus = 64\n{flat}")),
        guest("detect", "vcpus = 3\n"),
        guest("up", "")
    );
    let outcome = parsed(&text);
    assert_eq!(lines(&outcome), Vec::<String>::new());
    let counts: Vec<(&str, u32)> = outcome
        .config
        .guests
        .iter()
        .map(|g| (g.name.as_str(), g.vcpus))
        .collect();
    assert_eq!(
        counts,
        [
            ("linux", 4),
            ("mb", 2),
            ("flat", 64),
            ("detect", 3),
            ("up", 1)
        ]
    );
    // More vCPUs than physical CPUs to run them on is allowed: they take
    // turns.
    assert_eq!(outcome.config.guests[1].cpus, Some(vec![0]));
}

#[test]
fn vcpus_past_the_limit_are_refused() {
    let text = format!(
        "{}\n{}",
        guest("huge", "vcpus = 65\n"),
        guest("up", "vcpus = 1\n")
    );
    let outcome = parsed(&text);
    assert_eq!(names(&outcome), ["up"]);
    assert_eq!(
        lines(&outcome),
        ["config: error: hypervisor.toml:5:1: guest 'huge': vcpus 65 is out of range; use 1 to 64"]
    );
}

#[test]
fn a_bad_guest_is_skipped_with_all_its_errors_and_the_others_kept() {
    let text = format!(
        "{}\n[[guest]]\nname = \"bad\"\nkernel = \"k\"\nmemory = \"1M\"\nvcpus = 0\ncpus = [1, 1]\n\n{}",
        guest("first", ""),
        guest("last", "")
    );
    let outcome = parsed(&text);
    assert_eq!(names(&outcome), ["first", "last"]);
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:10:1: guest 'bad': vcpus 0 is out of range; use 1 to 64",
            "config: error: hypervisor.toml:11:12: guest 'bad': cpus lists CPU 1 twice; list each CPU once",
        ]
    );
}

#[test]
fn missing_and_invalid_required_keys() {
    let outcome = parsed(&format!("{}\n[[guest]]\nkernel = \"k\"\n", guest("a", "")));
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:6:1: guest #2: missing required key \"name\"; add name = \"...\"",
            "config: error: hypervisor.toml:6:1: guest #2: missing required key \"memory\"; add memory = \"128M\"",
        ]
    );
    assert_eq!(names(&outcome), ["a"]);
    assert_eq!(
        only_error("[[guest]]\nname = \"my web\"\nkernel = \"k\"\nmemory = \"1M\"\n"),
        "config: error: hypervisor.toml:2:1: guest #1: name \"my web\" is not a valid name; use 1 to 32 letters, digits, '_' or '-'"
    );
    assert!(only_error(&format!(
        "[[guest]]\nname = \"{}\"\nkernel = \"k\"\nmemory = \"1M\"\n",
        "x".repeat(33)
    ))
    .contains("is not a valid name"));
    assert_eq!(
        only_error("[[guest]]\nname = \"a\"\nmemory = \"1M\"\n"),
        "config: error: hypervisor.toml:1:1: guest 'a': missing required key \"kernel\"; add kernel = \"<path in the config partition>\""
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    assert_eq!(
        only_error(&guest("a", "vcpus = \"2\"\n")),
        "config: error: hypervisor.toml:5:1: guest 'a': vcpus must be an integer, not a string"
    );
    assert_eq!(
        only_error(&guest("a", "cmdline = 1979-05-27\n")),
        "config: error: hypervisor.toml:5:1: guest 'a': cmdline must be a string in quotes, not a date"
    );
    assert_eq!(
        only_error(&guest("a", "format = { x = 1 }\n")),
        "config: error: hypervisor.toml:5:1: guest 'a': format must be one of \"linux\", \"multiboot\" or \"flat\" (in quotes), not a table"
    );
    assert_eq!(
        only_error("[hypervisor]\npower_off_when_all_stopped = \"yes\"\n"),
        "config: error: hypervisor.toml:2:1: hypervisor: power_off_when_all_stopped must be true or false, not a string"
    );
}

#[test]
fn cpus_errors_point_at_the_element() {
    assert_eq!(
        only_error(&guest("a", "cpus = [0, -1]\n")),
        "config: error: hypervisor.toml:5:12: guest 'a': cpus -1 is out of range; use 0 to 4294967295"
    );
    assert_eq!(
        only_error(&guest("a", "cpus = []\n")),
        "config: error: hypervisor.toml:5:8: guest 'a': cpus is empty; list CPU indices like [0, 1], or remove cpus to run on any CPU"
    );
    assert_eq!(
        only_error(&guest("a", "cpus = 3\n")),
        "config: error: hypervisor.toml:5:8: guest 'a': cpus must be an array of CPU indices like [0, 1], not an integer"
    );
}

#[test]
fn paths_and_cmdline_are_checked() {
    assert_eq!(
        only_error("[[guest]]\nname = \"a\"\nkernel = \"../bzImage\"\nmemory = \"1M\"\n"),
        "config: error: hypervisor.toml:3:1: guest 'a': kernel \"../bzImage\" contains '.' or '..'; give the path from the partition's root"
    );
    assert!(only_error(&guest("a", "initrd = 'boot\\initrd'\n"))
        .ends_with("initrd 'boot\\initrd' contains '\\'; separate folders with '/'"));
    let long = "x".repeat(MAX_CMDLINE_LEN + 1);
    assert_eq!(
        only_error(&guest("a", &format!("cmdline = \"{long}\"\n"))),
        "config: error: hypervisor.toml:5:1: guest 'a': cmdline is 2049 bytes long; shorten it to at most 2048"
    );
    let exact = "x".repeat(MAX_CMDLINE_LEN);
    assert!(parsed(&guest("a", &format!("cmdline = \"{exact}\"\n")))
        .errors
        .is_empty());
}

#[test]
fn hypervisor_errors_keep_the_default_and_the_guests() {
    let text = format!(
        "[hypervisor]\nslice_ms = 0\nlog_level = \"verbose\"\nslice = 3\nconsole_hotkey = \"ctrl-m\"\non_guest_stop = \"reboot\"\n\n{}",
        guest("a", "")
    );
    let outcome = parsed(&text);
    assert_eq!(outcome.config.hypervisor, HypervisorSettings::default());
    assert_eq!(names(&outcome), ["a"]);
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:2:1: hypervisor: slice_ms 0 is out of range; use 1 to 1000 milliseconds",
            "config: error: hypervisor.toml:3:1: hypervisor: log_level \"verbose\" is not one of \"error\", \"warn\", \"info\", \"debug\" or \"trace\"",
            "config: error: hypervisor.toml:4:1: hypervisor: unknown key \"slice\" (did you mean \"slice_ms\"?)",
            "config: error: hypervisor.toml:5:1: hypervisor: console_hotkey \"ctrl-m\" is also sent by Enter, so the console could not tell them apart; pick another letter",
            "config: error: hypervisor.toml:6:1: hypervisor: on_guest_stop \"reboot\" is not one of \"stop\" or \"restart\"",
        ]
    );
    assert!(only_error("[hypervisor]\nconsole_hotkey = \"alt-x\"\n")
        .ends_with("hypervisor: console_hotkey \"alt-x\" is not a hot key like \"ctrl-a\"; write ctrl- and a letter"));
}

#[test]
fn errors_come_in_file_order() {
    // The toml crate keeps tables sorted by key; errors must not be.
    let text = "[[guest]]\nname = \"a\"\nzz = 1\nkernel = \"k\"\naa = 2\nmemory = \"1M\"\n";
    let positions: Vec<Position> = parsed(text)
        .errors
        .iter()
        .map(ConfigError::position)
        .collect();
    assert_eq!(positions, [at(3, 1), at(5, 1)]);
}

#[test]
fn columns_count_characters_and_skip_a_byte_order_mark() {
    let text = "[[guest]]\nname = \"a\"\nkernel = \"k\"\nmemory = \"1M\"\ncmdline = \"é\"; x = 1\n";
    // The syntax error is the `;` after `"é"`: column 14 in characters, 15
    // in bytes.
    assert_eq!(parsed(text).errors[0].position(), at(5, 14));
    let bom = format!("\u{feff}{}", guest("a", "memroy = 1\n"));
    assert_eq!(parsed(&bom).errors[0].position(), at(5, 1));
    assert_eq!(
        parsed("\u{feff}colour = 1\n").errors[0].position(),
        at(1, 1)
    );
}

#[test]
fn bytes_that_are_not_utf8_are_a_fatal_error_at_the_bad_byte() {
    let outcome = parse_bytes(FILE, b"[[guest]]\nname = \"caf\xe9\"\n");
    assert_eq!(
        lines(&outcome),
        ["config: error: hypervisor.toml:2:12: the file is not UTF-8 (byte 0xe9); save it as UTF-8"]
    );
    assert_eq!(outcome.config, Config::default());
    assert_eq!(parse_bytes(FILE, EXAMPLE.as_bytes()), parsed(EXAMPLE));
}

#[test]
fn missing_images_skip_the_guest_at_the_key_line() {
    let mut outcome = parsed(EXAMPLE);
    let present = [
        "linux/bzImage",
        "tests/multiboot.elf",
        "tests/hello.bin",
        "other.img",
    ];
    check_images(&mut outcome, |path| present.contains(&path));
    assert_eq!(
        lines(&outcome),
        ["config: error: hypervisor.toml:13:1: guest 'linux': initrd \"linux/initramfs.cpio\" is not in the config partition"]
    );
    assert_eq!(names(&outcome), ["mb-test", "hello_real", "detect"]);

    let mut outcome = parsed(&format!(
        "{}\n{}",
        guest("a", ""),
        "[[guest]]\nname = \"b\"\nmemory = \"1M\"\n\nkernel = \"bzImage\"\n"
    ));
    check_images(&mut outcome, |path| path != "bzImage");
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:3:1: guest 'a': kernel \"bzImage\" is not in the config partition",
            "config: error: hypervisor.toml:10:1: guest 'b': kernel \"bzImage\" is not in the config partition",
        ]
    );
    assert!(outcome.config.guests.is_empty());
}

#[test]
fn memory_budget_skips_guests_that_no_longer_fit_in_file_order() {
    let text = format!(
        "{}\n[[guest]]\nname = \"big\"\nkernel = \"k\"\nmemory = \"2G\"\n\n{}\n{}",
        guest("a", ""),
        guest("b", ""),
        guest("c", "")
    );
    // a (64M) fits, big (2G) does not, b (64M) fits, c (64M) no longer does.
    let mut outcome = parsed(&text);
    check_memory(&mut outcome, 192 * MIB, |_| 0);
    assert_eq!(names(&outcome), ["a", "b", "c"]);
    let mut outcome = parsed(&text);
    check_memory(&mut outcome, 130 * MIB, |_| 0);
    assert_eq!(names(&outcome), ["a", "b"]);
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:9:1: guest 'big': memory 2G does not fit in the 66M left of \
             130M free (the guests before it take the rest); lower memory or remove a guest",
            "config: error: hypervisor.toml:19:1: guest 'c': memory 64M does not fit in the 2M left of \
             130M free (the guests before it take the rest); lower memory or remove a guest",
        ]
    );
    // Exactly enough is enough.
    let mut outcome = parsed(&guest("a", ""));
    check_memory(&mut outcome, 64 * MIB, |_| 0);
    assert!(outcome.errors.is_empty());
}

#[test]
fn memory_budget_counts_each_guests_overhead() {
    let text = format!("{}\n{}", guest("a", ""), guest("b", ""));
    // 128M is exactly two guests' RAM; with 40K of overhead each only the
    // first fits, and the second is told what it needed.
    let mut outcome = parsed(&text);
    let mut asked = Vec::new();
    check_memory(&mut outcome, 128 * MIB, |g| {
        asked.push(g.name.clone());
        40 << 10
    });
    assert_eq!(asked, ["a", "b"]);
    assert_eq!(names(&outcome), ["a"]);
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:9:1: guest 'b': memory 64M and its 40K of overhead \
          (page tables, control structures) do not fit in the 65496K left of 128M free \
          (the guests before it take the rest); lower memory or remove a guest"
        ]
    );
    // RAM plus overhead exactly is enough.
    let mut outcome = parsed(&text);
    check_memory(&mut outcome, 128 * MIB + (80 << 10), |_| 40 << 10);
    assert!(outcome.errors.is_empty());
    assert_eq!(names(&outcome), ["a", "b"]);
}

#[test]
fn memory_budget_sees_each_guests_vcpu_count() {
    // The overhead callback gets the whole GuestConfig, so a per-vCPU cost
    // (a VMCS and a save area each) grows with `vcpus`: with 16K per vCPU
    // and 64K of room past the RAM, one vCPU fits and eight do not.
    let text = format!("{}\n{}", guest("up", ""), guest("smp", "vcpus = 8\n"));
    let per_vcpu = |g: &GuestConfig| u64::from(g.vcpus) * (16 << 10);
    let mut outcome = parsed(&text);
    check_memory(&mut outcome, 128 * MIB + (64 << 10), per_vcpu);
    assert_eq!(names(&outcome), ["up"]);
    assert_eq!(
        lines(&outcome),
        [
            "config: error: hypervisor.toml:9:1: guest 'smp': memory 64M and its 128K of overhead \
          (page tables, control structures) do not fit in the 65584K left of 131136K free \
          (the guests before it take the rest); lower memory or remove a guest"
        ]
    );
    let mut outcome = parsed(&text);
    check_memory(&mut outcome, 128 * MIB + (144 << 10), per_vcpu);
    assert_eq!(names(&outcome), ["up", "smp"]);
}

#[test]
fn error_display_is_the_stable_console_line() {
    let e = ConfigError::new(
        "cfg/hypervisor.toml",
        at(3, 7),
        "guest 'x': something".into(),
    );
    assert_eq!(
        e.to_string(),
        "config: error: cfg/hypervisor.toml:3:7: guest 'x': something"
    );
}

#[test]
fn log_level_maps_to_the_log_crate() {
    assert_eq!(
        log::LevelFilter::from(LogLevel::Warn),
        log::LevelFilter::Warn
    );
    assert_eq!(
        log::LevelFilter::from(LogLevel::Trace),
        log::LevelFilter::Trace
    );
}

#[test]
fn corrupt_input_gives_errors_never_a_panic() {
    // Every prefix of the example, and every byte replaced by characters
    // that break TOML in different ways.
    for end in (0..=EXAMPLE.len()).filter(|&i| EXAMPLE.is_char_boundary(i)) {
        let outcome = parsed(&EXAMPLE[..end]);
        assert!(outcome.errors.iter().all(|e| e.line >= 1 && e.column >= 1));
    }
    for i in 0..EXAMPLE.len() {
        for c in ["\"", "[", "=", "\r", "\u{feff}", "é", "\0"] {
            let mut text = String::from(&EXAMPLE[..i]);
            text.push_str(c);
            text.push_str(&EXAMPLE[i + 1..]);
            let _ = parsed(&text);
        }
    }
    // Deep nesting is refused by the TOML parser's depth limit, not by
    // overflowing the (small, in the kernel) stack.
    let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(parsed(&deep).config, Config::default());
    let _ = parse_bytes(FILE, &[0xff; 3]);
    let _ = parse_bytes(FILE, b"a = \"\xe2\x82");
}

#[test]
fn console_hotkey_takes_a_ctrl_letter_but_not_one_a_terminal_sends_for_another_key() {
    // Letters whose byte a terminal sends for another key or for flow
    // control could never be the hot key; every other letter is taken.
    for letter in b'a'..=b'z' {
        let ch = char::from(letter);
        let text = format!("[hypervisor]\n\nconsole_hotkey = \"Ctrl-{ch}\"\n");
        let outcome = parsed(&text);
        if "hijmqs".contains(ch) {
            let line = only_error(&text);
            assert!(
                line.starts_with("config: error: hypervisor.toml:3:1: hypervisor: console_hotkey"),
                "{line}"
            );
            assert_eq!(outcome.config.hypervisor.console_hotkey.byte(), 0x01);
        } else {
            assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
            assert_eq!(
                outcome.config.hypervisor.console_hotkey.byte(),
                letter - b'a' + 1
            );
        }
    }
    assert!(only_error("[hypervisor]\nconsole_hotkey = 1\n").contains("console_hotkey"));
}
