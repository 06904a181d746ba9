//! Host tests of the console as the operator sees it: what reaches the
//! screen, where typed bytes go, what the monitor answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use proptest::prelude::*;

use crate::*;

const PAUSE: u64 = 1_000;

/// Drains everything ready at `now`, `budget` bytes a call.
fn drain(mux: &mut Mux, now: u64, budget: usize) -> String {
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        let sent = mux.next_chunk(now, budget, &mut |b| out.extend_from_slice(b));
        assert!(sent <= budget);
        if sent == 0 {
            break;
        }
        calls += 1;
        assert!(calls < 1_000_000, "the mux never runs dry");
    }
    // Raw output of a focused guest may be any bytes.
    String::from_utf8_lossy(&out).into_owned()
}

fn guest_mux(names: &[&str]) -> (Mux, Vec<SourceId>) {
    let mut mux = Mux::new(PAUSE);
    let ids = names
        .iter()
        .map(|n| mux.add_source(n, SourceKind::Guest, OutputRing::new(4096, 1024)))
        .collect();
    (mux, ids)
}

/// Feeds `bytes` to `router`; returns what it routed, in order, owned.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Guest(SourceId, Vec<u8>),
    Monitor(Vec<u8>),
    Focus(Focus, String),
}

fn route(router: &mut InputRouter, bytes: &[u8]) -> Vec<Got> {
    let mut got: Vec<Got> = Vec::new();
    router.feed(bytes, &mut |r| {
        // Merge runs to the same place, as a caller would see them.
        match (r, got.last_mut()) {
            (Routed::Guest(id, b), Some(Got::Guest(last, v))) if *last == id => {
                v.extend_from_slice(b)
            }
            (Routed::Guest(id, b), _) => got.push(Got::Guest(id, b.to_vec())),
            (Routed::Monitor(b), Some(Got::Monitor(v))) => v.extend_from_slice(b),
            (Routed::Monitor(b), _) => got.push(Got::Monitor(b.to_vec())),
            (
                Routed::FocusChanged {
                    focus,
                    announcement,
                },
                _,
            ) => got.push(Got::Focus(focus, announcement.to_string())),
        }
    });
    got
}

mod router {
    use super::*;

    fn router_with(names: &[&str]) -> (InputRouter, Vec<SourceId>) {
        let (_, ids) = guest_mux(names);
        let mut router = InputRouter::new(0x01);
        for (id, name) in ids.iter().zip(names) {
            router.add_guest(*id, name);
        }
        (router, ids)
    }

    #[test]
    fn three_presses_cycle_through_every_guest_and_back_to_the_monitor() {
        let (mut router, ids) = router_with(&["a", "b", "c"]);
        assert_eq!(router.focus(), Focus::Monitor);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let got = route(&mut router, b"\x01\x01\x01");
            assert_eq!(got.len(), 1, "{got:?}");
            let Got::Focus(focus, line) = &got[0] else {
                panic!("{got:?}")
            };
            assert!(!line.contains('\n'));
            seen.push((*focus, line.clone()));
        }
        let focuses: Vec<Focus> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            focuses,
            [
                Focus::Guest(ids[0]),
                Focus::Guest(ids[1]),
                Focus::Guest(ids[2]),
                Focus::Monitor
            ]
        );
        assert_eq!(
            seen[1].1,
            "console: input goes to b (ctrl-a 3 times switches)"
        );
        assert_eq!(
            seen[3].1,
            "console: input goes to the monitor; type help (ctrl-a 3 times switches)"
        );
    }

    #[test]
    fn input_goes_to_the_focus() {
        let (mut router, ids) = router_with(&["a", "b"]);
        assert_eq!(
            route(&mut router, b"ls\r"),
            [Got::Monitor(b"ls\r".to_vec())]
        );
        let got = route(&mut router, b"\x01\x01\x01uname\r");
        assert_eq!(got[1], Got::Guest(ids[0], b"uname\r".to_vec()));
    }

    #[test]
    fn one_press_then_a_key_passes_both_through() {
        let (mut router, ids) = router_with(&["a"]);
        route(&mut router, b"\x01\x01\x01");
        assert_eq!(
            route(&mut router, b"x\x01ay"),
            [Got::Guest(ids[0], b"x\x01ay".to_vec())]
        );
        // Two presses then a key: both presses and the key pass.
        assert_eq!(
            route(&mut router, b"\x01\x01z"),
            [Got::Guest(ids[0], b"\x01\x01z".to_vec())]
        );
        // Four presses: the first three switch, the fourth is held and
        // passes with the next key, to the new focus.
        let got = route(&mut router, b"\x01\x01\x01\x01q");
        assert_eq!(got[0], Got::Focus(Focus::Monitor, got_line(&got[0])));
        assert_eq!(got[1], Got::Monitor(b"\x01q".to_vec()));
    }

    fn got_line(got: &Got) -> String {
        match got {
            Got::Focus(_, line) => line.clone(),
            _ => String::new(),
        }
    }

    #[test]
    fn held_presses_wait_for_the_next_byte() {
        let (mut router, ids) = router_with(&["a"]);
        route(&mut router, b"\x01\x01\x01");
        assert_eq!(route(&mut router, b"\x01"), []);
        assert_eq!(
            route(&mut router, b"b"),
            [Got::Guest(ids[0], b"\x01b".to_vec())]
        );
    }

    #[test]
    fn a_hot_key_sequence_split_across_feeds_switches() {
        let (mut router, ids) = router_with(&["a", "b"]);
        assert_eq!(route(&mut router, b"\x01"), []);
        assert_eq!(route(&mut router, b"\x01"), []);
        let got = route(&mut router, b"\x01hi");
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Got::Focus(Focus::Guest(id), _) if id == ids[0]));
        assert_eq!(got[1], Got::Guest(ids[0], b"hi".to_vec()));
        // Byte by byte.
        let mut all = Vec::new();
        for &b in b"\x01\x01\x01" {
            all.extend(route(&mut router, &[b]));
        }
        assert!(matches!(all[..], [Got::Focus(Focus::Guest(id), _)] if id == ids[1]));
    }

    #[test]
    fn another_hot_key_is_honoured_and_ctrl_a_passes() {
        let mut router = InputRouter::new(0x02);
        assert_eq!(router.hotkey_name(), "ctrl-b");
        let (_, ids) = guest_mux(&["g"]);
        router.add_guest(ids[0], "g");
        assert_eq!(
            route(&mut router, b"\x01\x01\x01"),
            [Got::Monitor(b"\x01\x01\x01".to_vec())]
        );
        let got = route(&mut router, b"\x02\x02\x02");
        assert!(matches!(&got[..], [Got::Focus(_, line)] if line.contains("ctrl-b 3 times")));
    }

    #[test]
    fn focus_list_follows_guests_coming_and_going() {
        let (mut router, ids) = router_with(&["a", "b", "c"]);
        route(&mut router, b"\x01\x01\x01\x01\x01\x01");
        assert_eq!(router.focus(), Focus::Guest(ids[1]));
        // b stops while in focus: the monitor gets it, announced.
        let mut got = Vec::new();
        router.remove_guest(ids[1], &mut |r| {
            if let Routed::FocusChanged { focus, .. } = r {
                got.push(focus)
            }
        });
        assert_eq!(got, [Focus::Monitor]);
        assert_eq!(router.guests().count(), 2);
        // Removing one not in focus says nothing.
        router.remove_guest(ids[2], &mut |_| panic!("no announcement"));
        // b is restarted: it comes back at the end of the list.
        router.add_guest(ids[1], "b");
        let names: Vec<&str> = router.guests().map(|g| g.1).collect();
        assert_eq!(names, ["a", "b"]);
        let mut cycle = Vec::new();
        for _ in 0..3 {
            for got in route(&mut router, b"\x01\x01\x01") {
                if let Got::Focus(f, _) = got {
                    cycle.push(f)
                }
            }
        }
        assert_eq!(
            cycle,
            [Focus::Guest(ids[0]), Focus::Guest(ids[1]), Focus::Monitor]
        );
    }

    #[test]
    fn with_no_guests_the_hot_key_stays_on_the_monitor() {
        let mut router = InputRouter::new(0x01);
        let got = route(&mut router, b"\x01\x01\x01");
        assert!(matches!(got[..], [Got::Focus(Focus::Monitor, _)]));
    }

    #[test]
    fn input_buffer_is_bounded_and_counts_drops() {
        let mut buffer = InputBuffer::new();
        for i in 0..INPUT_CAPACITY + 10 {
            buffer.push(i as u8);
        }
        assert_eq!(buffer.len(), INPUT_CAPACITY);
        assert_eq!(buffer.dropped(), 10);
        let mut out = [0u8; 100];
        assert_eq!(buffer.drain(&mut out), 100);
        assert_eq!(out[0], 0);
        assert_eq!(out[99], 99);
        // Wraps around.
        for i in 0..100u8 {
            assert!(buffer.push(i));
        }
        let mut rest = vec![0u8; 1000];
        let n = buffer.drain(&mut rest);
        assert_eq!(n, INPUT_CAPACITY);
        assert_eq!(rest[INPUT_CAPACITY - 100 - 1], (INPUT_CAPACITY - 1) as u8);
        assert_eq!(
            &rest[INPUT_CAPACITY - 100..n],
            (0..100u8).collect::<Vec<_>>()
        );
        assert!(buffer.is_empty());
    }

    proptest! {
        /// Random bytes (the hot key frequent among them): no panic, no
        /// byte lost or invented other than the hot key presses that
        /// switched, and the focus is always the monitor or a listed guest.
        #[test]
        fn random_input_is_routed_consistently(
            chunks in prop::collection::vec(
                prop::collection::vec(prop_oneof![Just(1u8), any::<u8>()], 0..40),
                0..20,
            ),
            removals in prop::collection::vec(0usize..4, 0..3),
        ) {
            let (mut router, ids) = router_with(&["a", "b", "c"]);
            let mut delivered = 0usize;
            let mut switches = 0usize;
            let mut fed = 0usize;
            for (i, chunk) in chunks.iter().enumerate() {
                fed += chunk.len();
                let mut last_focus = None;
                for got in route(&mut router, chunk) {
                    match got {
                        Got::Guest(id, bytes) => {
                            prop_assert!(ids.contains(&id));
                            delivered += bytes.len();
                        }
                        Got::Monitor(bytes) => delivered += bytes.len(),
                        Got::Focus(f, line) => {
                            switches += 1;
                            prop_assert!(!line.contains('\n'));
                            last_focus = Some(f);
                        }
                    }
                }
                if let Some(f) = last_focus {
                    prop_assert_eq!(f, router.focus());
                }
                if let Some(&r) = removals.get(i) {
                    if let Some(&id) = ids.get(r) {
                        router.remove_guest(id, &mut |_| {});
                    }
                }
                match router.focus() {
                    Focus::Monitor => {}
                    Focus::Guest(id) => prop_assert!(router.guests().any(|g| g.0 == id)),
                }
            }
            // At most two presses are held back at the end.
            prop_assert!(fed >= delivered + 3 * switches);
            prop_assert!(fed - delivered - 3 * switches <= 2);
        }
    }
}

mod output {
    use super::*;

    #[test]
    fn monitor_view_prefixes_guest_lines_and_uses_crlf() {
        let (mut mux, ids) = guest_mux(&["linux", "bare"]);
        mux.write(ids[0], b"Booting\r\n", 0);
        mux.write(ids[1], b"hello\n", 0);
        assert_eq!(
            drain(&mut mux, 0, 16),
            "[linux] Booting\r\n[bare] hello\r\n"
        );
    }

    #[test]
    fn concurrent_long_lines_come_out_whole() {
        let (mut mux, ids) = guest_mux(&["a", "b"]);
        let a_line = "A".repeat(120);
        let b_line = "b".repeat(150);
        // Both print byte by byte, interleaved, while the port drains a
        // little at a time.
        let mut screen = String::new();
        for i in 0..150 {
            if i < 120 {
                mux.write(ids[0], &a_line.as_bytes()[i..=i], 0);
            }
            mux.write(ids[1], &b_line.as_bytes()[i..=i], 0);
            if i == 119 {
                mux.write(ids[0], b"\n", 0);
            }
            screen += &drain(&mut mux, 0, 7);
        }
        mux.write(ids[1], b"\n", 0);
        screen += &drain(&mut mux, 0, 7);
        assert_eq!(screen, format!("[a] {a_line}\r\n[b] {b_line}\r\n"));
    }

    #[test]
    fn a_flooding_guest_delays_another_by_at_most_one_line_per_round() {
        let (mut mux, ids) = guest_mux(&["flood", "quiet"]);
        for i in 0..50 {
            mux.write(ids[0], format!("flood line {i}\n").as_bytes(), 0);
        }
        mux.write(ids[1], b"one\ntwo\n", 0);
        let screen = drain(&mut mux, 0, 16);
        let lines: Vec<&str> = screen.split("\r\n").collect();
        assert_eq!(
            &lines[..5],
            [
                "[flood] flood line 0",
                "[quiet] one",
                "[flood] flood line 1",
                "[quiet] two",
                "[flood] flood line 2"
            ]
        );
        // The flooder keeps its ring full between drains: once the quiet
        // guest writes, at most one flood line (the one in progress) goes
        // out before its line.
        let (mut mux, ids) = guest_mux(&["flood", "quiet"]);
        let mut screen = String::new();
        let mut written_at = None;
        for round in 0..30 {
            for i in 0..10 {
                mux.write(ids[0], format!("f{round}.{i}\n").as_bytes(), 0);
            }
            if round == 10 {
                mux.write(ids[1], b"late\n", 0);
                written_at = Some(screen.len());
            }
            let mut out = Vec::new();
            mux.next_chunk(0, 5, &mut |b| out.extend_from_slice(b));
            screen += &String::from_utf8(out).unwrap();
        }
        let from = written_at.unwrap();
        let late = screen.find("[quiet] late").unwrap();
        assert!(late > from);
        assert!(
            screen[from..late].matches("[flood]").count() <= 1,
            "{screen}"
        );
    }

    #[test]
    fn a_host_line_waits_for_the_guest_output_written_before_it() {
        // The log says a guest stopped after the guest's last lines, even
        // though the log's turn would come first.
        let (mut mux, ids) = guest_mux(&["g", "h"]);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        mux.write(ids[0], b"one\ntwo\nthree\n", 0);
        mux.write(ids[1], b"h1\n", 0);
        mux.write(log, b"guest g: stopped\n", 0);
        // Written after the log line: not waited for.
        mux.write(ids[1], b"h2\nh3\n", 0);
        let screen = drain(&mut mux, 0, 7);
        let at = |needle: &str| screen.find(needle).unwrap();
        assert!(at("[g] three") < at("guest g: stopped"), "{screen}");
        assert!(at("[h] h1") < at("guest g: stopped"), "{screen}");
        assert!(screen.contains("[h] h3"), "{screen}");
        // Nor does it wait for output written after it.
        let (mut mux, ids) = guest_mux(&["g"]);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        mux.write(ids[0], b"one\n", 0);
        mux.write(log, b"stopped\n", 0);
        mux.write(ids[0], b"two\nthree\n", 0);
        assert_eq!(
            drain(&mut mux, 0, 5),
            "[g] one\r\nstopped\r\n[g] two\r\n[g] three\r\n"
        );
        // A partial guest line holds the log back only until the pause.
        let (mut mux, ids) = guest_mux(&["sh"]);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        mux.write(ids[0], b"# ", 0);
        mux.write(log, b"later\n", 0);
        assert_eq!(drain(&mut mux, 1, 16), "");
        assert_eq!(drain(&mut mux, PAUSE, 16), "[sh] # \r\nlater\r\n");
    }

    #[test]
    fn guest_output_waits_for_the_host_lines_written_before_it() {
        let (mut mux, ids) = guest_mux(&["g"]);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        mux.write(log, b"guest g: started\n", 0);
        mux.write(ids[0], b"hello\n", 0);
        mux.write(log, b"guest g: stopped\n", 0);
        assert_eq!(
            drain(&mut mux, 0, 4),
            "guest g: started\r\n[g] hello\r\nguest g: stopped\r\n"
        );
    }

    #[test]
    fn host_lines_of_different_sources_keep_their_order() {
        let mut mux = Mux::new(PAUSE);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        let monitor = mux.add_source("monitor", SourceKind::Host, OutputRing::new(4096, 0));
        mux.write(monitor, b"m1\n", 0);
        mux.write(log, b"l1\n", 0);
        mux.write(log, b"l2\n", 0);
        mux.write(monitor, b"m2\n", 0);
        assert_eq!(drain(&mut mux, 0, 3), "m1\r\nl1\r\nl2\r\nm2\r\n");
    }

    #[test]
    fn a_long_host_line_stays_whole() {
        let (mut mux, ids) = guest_mux(&["g"]);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        let long = "x".repeat(LINE_MAX * 3);
        mux.write(log, format!("{long}\n").as_bytes(), 0);
        mux.write(ids[0], b"after\n", 0);
        assert_eq!(drain(&mut mux, 0, 16), format!("{long}\r\n[g] after\r\n"));
    }

    #[test]
    fn round_robin_interleaves_one_line_each() {
        let (mut mux, ids) = guest_mux(&["x", "y", "z"]);
        for id in &ids {
            mux.write(*id, b"1\n2\n3\n", 0);
        }
        let screen = drain(&mut mux, 0, 5);
        assert_eq!(
            screen,
            "[x] 1\r\n[y] 1\r\n[z] 1\r\n[x] 2\r\n[y] 2\r\n[z] 2\r\n[x] 3\r\n[y] 3\r\n[z] 3\r\n"
        );
    }

    #[test]
    fn a_partial_line_appears_after_the_pause() {
        let (mut mux, ids) = guest_mux(&["sh"]);
        mux.write(ids[0], b"login: ", 100);
        assert_eq!(drain(&mut mux, 100 + PAUSE - 1, 16), "");
        assert_eq!(drain(&mut mux, 100 + PAUSE, 16), "[sh] login: \r\n");
        // What follows is a new line.
        mux.write(ids[0], b"root\n", 5000);
        assert_eq!(drain(&mut mux, 5000, 16), "[sh] root\r\n");
    }

    #[test]
    fn a_line_end_after_a_partial_line_shown_early_makes_no_empty_line() {
        for end in [&b"\n"[..], b"\r\n"] {
            let (mut mux, ids) = guest_mux(&["sh"]);
            mux.write(ids[0], b"progress", 0);
            assert_eq!(drain(&mut mux, PAUSE, 16), "[sh] progress\r\n");
            mux.write(ids[0], end, 5000);
            mux.write(ids[0], b"next\n", 5000);
            assert_eq!(drain(&mut mux, 5000, 16), "[sh] next\r\n");
        }
    }

    #[test]
    fn a_held_guest_keeps_its_partial_line_until_it_runs_and_pauses() {
        // Preempted mid-line, a guest is not quiet: its line waits.
        let (mut mux, ids) = guest_mux(&["spin", "other"]);
        mux.write(ids[0], b"progr", 0);
        mux.hold(ids[0], true, 10);
        mux.write(ids[1], b"meanwhile\n", 20);
        assert_eq!(drain(&mut mux, 10 * PAUSE, 16), "[other] meanwhile\r\n");
        // Running again, it finishes the line itself.
        mux.hold(ids[0], false, 10 * PAUSE);
        mux.write(ids[0], b"ess 20\n", 10 * PAUSE + 1);
        assert_eq!(
            drain(&mut mux, 10 * PAUSE + 1, 16),
            "[spin] progress 20\r\n"
        );
        // Released, its pause counts from the release.
        mux.write(ids[0], b"$ ", 11 * PAUSE);
        mux.hold(ids[0], true, 11 * PAUSE);
        mux.hold(ids[0], false, 20 * PAUSE);
        assert_eq!(drain(&mut mux, 21 * PAUSE - 1, 16), "");
        assert_eq!(drain(&mut mux, 21 * PAUSE, 16), "[spin] $ \r\n");
    }

    #[test]
    fn a_trailing_cr_waits_to_see_if_a_newline_follows() {
        let (mut mux, ids) = guest_mux(&["g"]);
        mux.write(ids[0], b"abc\r", 0);
        assert_eq!(drain(&mut mux, 0, 16), "");
        mux.write(ids[0], b"\n10%\r20%\r\r\n\rx\n\n", 1);
        assert_eq!(
            drain(&mut mux, 1, 16),
            "[g] abc\r\n[g] 10%\r\n[g] 20%\r\n[g] x\r\n[g] \r\n"
        );
        mux.write(ids[0], b"end\r", 2);
        assert_eq!(drain(&mut mux, 2 + PAUSE, 16), "[g] end\r\n");
    }

    #[test]
    fn long_lines_split_and_controls_are_escaped() {
        let (mut mux, ids) = guest_mux(&["g"]);
        let long = vec![b'x'; LINE_MAX + 3];
        mux.write(ids[0], &long, 0);
        mux.write(ids[0], b"\n\x1b[31mred\x07\n", 0);
        let screen = drain(&mut mux, 0, 16);
        assert_eq!(
            screen,
            format!(
                "[g] {}\r\n[g] xxx\r\n[g] \\x1b[31mred\\x07\r\n",
                "x".repeat(LINE_MAX)
            )
        );
    }

    #[test]
    fn a_full_ring_drops_and_counts_without_blocking() {
        let mut mux = Mux::new(PAUSE);
        let g = mux.add_source("g", SourceKind::Guest, OutputRing::new(10, 100));
        assert_eq!(mux.write(g, b"0123456789abcdef", 0), 10);
        assert_eq!(mux.ring(g).unwrap().dropped(), 6);
        assert_eq!(mux.dropped(), 6);
        assert_eq!(drain(&mut mux, PAUSE, 64), "[g] 0123456789\r\n");
        // The tail kept all of it for replay.
        assert_eq!(mux.ring(g).unwrap().history(), b"0123456789abcdef");
    }

    #[test]
    fn the_focused_guest_is_raw_and_others_are_kept_for_replay() {
        let (mut mux, ids) = guest_mux(&["a", "b"]);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        mux.set_focus(Focus::Guest(ids[0]));
        mux.write(ids[0], b"\x1b[1m$ ", 10);
        mux.write(ids[1], b"hidden line\n", 10);
        // Raw, unprefixed, no wait for a line end.
        assert_eq!(drain(&mut mux, 10, 4), "\x1b[1m$ ");
        // A log line waits while the guest is mid-line and talking...
        mux.write(log, b"[cpu0] WARN x: y\n", 20);
        mux.write(ids[0], b"l", 20);
        assert_eq!(drain(&mut mux, 20, 16), "l");
        // ... and goes out on a fresh line once it is quiet.
        assert_eq!(drain(&mut mux, 20 + PAUSE, 16), "\r\n[cpu0] WARN x: y\r\n");
        // b's output was not shown but is in its replay tail, and its
        // queue did not fill.
        assert_eq!(mux.ring(ids[1]).unwrap().history(), b"hidden line\n");
        assert!(mux.ring(ids[1]).unwrap().is_empty());
        assert_eq!(mux.ring(ids[1]).unwrap().dropped(), 0);
        // Back to the monitor: everyone by lines again.
        mux.set_focus(Focus::Monitor);
        mux.write(ids[1], b"shown\n", 30);
        assert_eq!(drain(&mut mux, 30, 16), "[b] shown\r\n");
    }

    #[test]
    fn log_lines_go_out_at_the_focused_guests_line_boundary() {
        let (mut mux, ids) = guest_mux(&["a"]);
        let log = mux.add_source("log", SourceKind::Host, OutputRing::new(4096, 0));
        mux.set_focus(Focus::Guest(ids[0]));
        mux.write(ids[0], b"done\n", 0);
        mux.write(log, b"note\n", 0);
        assert_eq!(drain(&mut mux, 0, 16), "done\nnote\r\n");
    }

    #[test]
    fn the_prompt_stays_on_the_last_line() {
        let (mut mux, ids) = guest_mux(&["g"]);
        mux.set_prompt(b"(ferrovisor) ");
        assert_eq!(drain(&mut mux, 0, 16), "\r\x1b[K(ferrovisor) ");
        // Typing adds only what is new.
        mux.set_prompt(b"(ferrovisor) li");
        assert_eq!(drain(&mut mux, 0, 16), "li");
        // A guest line erases the prompt, then it is drawn again.
        mux.write(ids[0], b"hi\n", 0);
        assert_eq!(
            drain(&mut mux, 0, 16),
            "\r\x1b[K[g] hi\r\n\r\x1b[K(ferrovisor) li"
        );
        // Backspace redraws.
        mux.set_prompt(b"(ferrovisor) l");
        assert_eq!(drain(&mut mux, 0, 16), "\r\x1b[K(ferrovisor) l");
        // Switching to a guest erases it; no prompt while a guest is in focus.
        mux.set_focus(Focus::Guest(ids[0]));
        assert_eq!(drain(&mut mux, 0, 16), "\r\x1b[K");
        mux.set_prompt(b"(ferrovisor) x");
        assert!(!mux.has_output());
    }

    #[test]
    fn removing_the_focused_source_returns_to_the_monitor() {
        let (mut mux, ids) = guest_mux(&["a", "b"]);
        mux.set_focus(Focus::Guest(ids[1]));
        let ring = mux.remove_source(ids[1]).unwrap();
        assert!(ring.is_empty());
        assert_eq!(mux.focus(), Focus::Monitor);
        assert!(mux.remove_source(ids[1]).is_none());
        assert_eq!(mux.write(ids[1], b"x", 0), 0);
        // Focus on an unknown or host source is the monitor.
        let host = mux.add_source("log", SourceKind::Host, OutputRing::new(8, 0));
        mux.set_focus(Focus::Guest(host));
        assert_eq!(mux.focus(), Focus::Monitor);
        mux.write(ids[0], b"still\n", 0);
        assert_eq!(drain(&mut mux, 0, 16), "[a] still\r\n");
    }

    proptest! {
        /// Any guest bytes, any budget, any focus changes: no panic, the
        /// budget is kept, the mux runs dry, memory stays bounded, and in
        /// the monitor view every line on the screen is a whole,
        /// prefixed, printable line.
        #[test]
        fn any_output_gives_whole_safe_lines(
            writes in prop::collection::vec((0usize..3, prop::collection::vec(any::<u8>(), 0..80)), 0..40),
            budget in 1usize..40,
        ) {
            let (mut mux, ids) = guest_mux(&["a", "b", "c"]);
            let mut screen = String::new();
            for (t, (who, bytes)) in writes.iter().enumerate() {
                mux.write(ids[*who], bytes, t as u64);
                screen += &drain(&mut mux, t as u64, budget);
                for id in &ids {
                    prop_assert!(mux.ring(*id).unwrap().pending_len() <= 4096);
                }
            }
            screen += &drain(&mut mux, u64::MAX, budget);
            prop_assert!(!mux.has_output());
            prop_assert!(screen.is_empty() || screen.ends_with("\r\n"));
            for line in screen.split("\r\n").filter(|l| !l.is_empty()) {
                prop_assert!(line.starts_with("[a] ") || line.starts_with("[b] ") || line.starts_with("[c] "), "{:?}", line);
                prop_assert!(line.bytes().all(|b| b == b'\t' || (0x20..=0x7E).contains(&b)));
                prop_assert!(line.len() <= 4 + 4 * LINE_MAX);
            }
        }

        /// With random focus changes and raw output too, the mux never
        /// panics, keeps the budget and always runs dry.
        #[test]
        fn random_focus_and_output_never_stall(
            steps in prop::collection::vec((0usize..5, prop::collection::vec(any::<u8>(), 0..50), 0u64..3000), 0..40),
            budget in 1usize..20,
        ) {
            let (mut mux, ids) = guest_mux(&["a", "b"]);
            let log = mux.add_source("log", SourceKind::Host, OutputRing::new(512, 0));
            let mut now = 0u64;
            for (op, bytes, dt) in steps {
                now += dt;
                match op {
                    0 | 1 => { mux.write(ids[op], &bytes, now); }
                    2 => { mux.write(log, &bytes, now); }
                    3 => mux.set_focus(match bytes.first().map(|b| b % 3) {
                        Some(0) => Focus::Guest(ids[0]),
                        Some(1) => Focus::Guest(ids[1]),
                        _ => Focus::Monitor,
                    }),
                    _ => mux.set_prompt(&bytes),
                }
                drain(&mut mux, now, budget);
            }
            drain(&mut mux, u64::MAX, budget);
            prop_assert!(!mux.has_output());
        }
    }
}

mod monitor {
    use super::*;

    /// A fake hypervisor: two guests, `a` with 64 KiB of RAM holding its
    /// own offsets, `b` stopped.
    struct Fake {
        ram: Vec<u8>,
        paused: bool,
        poweroff: bool,
        level: Option<LogLevel>,
        calls: Vec<String>,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                ram: (0..0x10000u32).map(|i| i as u8).collect(),
                paused: false,
                poweroff: false,
                level: None,
                calls: Vec::new(),
            }
        }
    }

    fn summary(name: &str) -> GuestSummary {
        match name {
            "a" => GuestSummary {
                name: "a".into(),
                state: GuestState::Running,
                vcpus: 1,
                cpus: vec![],
                memory: 0x10000,
                uptime_ms: 3_723_000,
                exits: 12345,
            },
            _ => GuestSummary {
                name: "linux-2".into(),
                state: GuestState::Stopped,
                vcpus: 1,
                cpus: vec![1, 3],
                memory: 512 << 20,
                uptime_ms: 59_999,
                exits: 7,
            },
        }
    }

    impl MonitorTarget for Fake {
        fn guests(&self) -> Vec<GuestSummary> {
            vec![summary("a"), summary("linux-2")]
        }
        fn info(&self, guest: &str) -> Option<GuestInfo> {
            Some(GuestInfo {
                summary: summary(guest),
                format: "linux".into(),
                kernel: "linux/bzImage".into(),
                initrd: Some("linux/initrd".into()),
                cmdline: "console=ttyS0\x1b".into(),
                last_stop: None,
                restarts: 2,
                console_dropped: 5,
            })
        }
        fn regs(&mut self, guest: &str, vcpu: u32) -> Result<RegisterSnapshot, String> {
            if guest != "a" || vcpu != 0 {
                return Err(format!("no vcpu {vcpu}; the guest has 1"));
            }
            let mut gprs = [0u64; 16];
            for (i, g) in gprs.iter_mut().enumerate() {
                *g = 0x1111_1111_1111_1111 * i as u64;
            }
            Ok(RegisterSnapshot {
                gprs,
                rip: 0xffff_ffff_8100_0000,
                rflags: 0x202,
                cr0: 0x8005_0033,
                cr2: 0,
                cr3: 0x1000,
                cr4: 0x20,
                efer: 0xd01,
                cs: Segment {
                    selector: 0x10,
                    base: 0,
                    limit: 0xffff_ffff,
                    access: 0xa09b,
                },
                gdtr: (0x5000, 0x27),
                idtr: (0x6000, 0xfff),
                ..RegisterSnapshot::default()
            })
        }
        fn read_memory(&mut self, guest: &str, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
            if guest != "a" {
                return Err(MemError::NoMemory);
            }
            let end = gpa.checked_add(buf.len() as u64);
            match end {
                Some(end) if end <= self.ram.len() as u64 => {
                    buf.copy_from_slice(&self.ram[gpa as usize..end as usize]);
                    Ok(())
                }
                _ => Err(MemError::OutOfRange {
                    ram: addr::RamLayout::new(self.ram.len() as u64).unwrap(),
                }),
            }
        }
        fn exits(&self, _: &str) -> Option<ExitCounts> {
            Some(ExitCounts {
                total: 1000,
                by_reason: vec![("hlt".into(), 1), ("io".into(), 900), ("cpuid".into(), 99)],
            })
        }
        fn log(&self, guest: &str) -> Option<Vec<u8>> {
            Some(if guest == "a" {
                b"one\r\ntwo\x07\r\n$ ".to_vec()
            } else {
                Vec::new()
            })
        }
        fn pause(&mut self, guest: &str) -> Result<(), String> {
            self.calls.push(format!("pause {guest}"));
            if self.paused {
                return Err("already paused".into());
            }
            self.paused = true;
            Ok(())
        }
        fn resume(&mut self, guest: &str) -> Result<(), String> {
            self.calls.push(format!("resume {guest}"));
            Ok(())
        }
        fn stop(&mut self, guest: &str) -> Result<(), String> {
            self.calls.push(format!("stop {guest}"));
            Ok(())
        }
        fn restart(&mut self, guest: &str) -> Result<(), String> {
            self.calls.push(format!("restart {guest}"));
            Ok(())
        }
        fn stats(&self) -> HostStats {
            HostStats {
                uptime_ms: 61_000,
                cpus: vec![CpuStats {
                    cpu: 0,
                    guest_permille: 935,
                    switches: 42,
                }],
                free_memory: 100 << 20,
                total_memory: 1 << 30,
                largest_free: 64 << 20,
                console_dropped: 3,
                input_dropped: 0,
            }
        }
        fn set_log_level(&mut self, level: LogLevel) -> Result<(), String> {
            self.level = Some(level);
            Ok(())
        }
        fn poweroff(&mut self) {
            self.poweroff = true;
        }
    }

    fn run(line: &str) -> Vec<String> {
        run_on(&mut Fake::new(), line)
    }

    fn run_on(fake: &mut Fake, line: &str) -> Vec<String> {
        match parse(line) {
            Ok(Some(command)) => execute(&command, fake),
            Ok(None) => vec![],
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn parser_table() {
        let g = String::from;
        let ok: &[(&str, Command)] = &[
            ("help", Command::Help),
            ("  HELP  ", Command::Help),
            ("?", Command::Help),
            ("list", Command::List),
            ("info a", Command::Info(g("a"))),
            (
                "regs a",
                Command::Regs {
                    guest: g("a"),
                    vcpu: 0,
                },
            ),
            (
                "regs a 0x3f",
                Command::Regs {
                    guest: g("a"),
                    vcpu: 63,
                },
            ),
            (
                "mem a 0x1000",
                Command::Mem {
                    guest: g("a"),
                    gpa: 0x1000,
                    len: MEM_DEFAULT_LEN,
                },
            ),
            (
                "mem\ta\t4096\t16",
                Command::Mem {
                    guest: g("a"),
                    gpa: 4096,
                    len: 16,
                },
            ),
            (
                "mem a 0xffff_ffff_ffff_fff0 0x10",
                Command::Mem {
                    guest: g("a"),
                    gpa: 0xffff_ffff_ffff_fff0,
                    len: 16,
                },
            ),
            (
                "mem a 0 0x1000",
                Command::Mem {
                    guest: g("a"),
                    gpa: 0,
                    len: MEM_MAX_LEN,
                },
            ),
            ("exits a", Command::Exits(g("a"))),
            ("log a", Command::Log(g("a"))),
            ("pause a", Command::Pause(g("a"))),
            ("resume a", Command::Resume(g("a"))),
            ("stop a", Command::Stop(g("a"))),
            ("restart Linux-2", Command::Restart(g("Linux-2"))),
            ("stats", Command::Stats),
            ("loglevel DEBUG", Command::LogLevel(LogLevel::Debug)),
            ("loglevel trace", Command::LogLevel(LogLevel::Trace)),
            ("poweroff", Command::Poweroff),
        ];
        for (line, want) in ok {
            assert_eq!(parse(line), Ok(Some(want.clone())), "{line:?}");
        }
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t "), Ok(None));
        let bad: &[(&str, &str)] = &[
            (
                "frobnicate",
                "unknown command \"frobnicate\"; type help for the list",
            ),
            ("list all", "list takes no arguments"),
            ("poweroff now", "poweroff takes no arguments"),
            ("info", "usage: info <guest>"),
            ("info a b", "usage: info <guest>"),
            ("stop", "usage: stop <guest>"),
            (
                "regs a 64",
                "regs: vcpu 64 is out of range; use 0 to 63 (0x3f)",
            ),
            (
                "regs a -1",
                "regs: vcpu \"-1\" is not a number; write decimal or 0x-hex",
            ),
            ("regs a 1 2", "usage: regs <guest> [vcpu]"),
            ("mem a", "usage: mem <guest> <gpa> [len]"),
            (
                "mem a 0x",
                "mem: gpa \"0x\" is not a number; write decimal or 0x-hex",
            ),
            (
                "mem a 0xg",
                "mem: gpa \"0xg\" is not a number; write decimal or 0x-hex",
            ),
            (
                "mem a 12ab",
                "mem: gpa \"12ab\" is not a number; write decimal or 0x-hex",
            ),
            (
                "mem a 0 0",
                "mem: len 0 is out of range; use 1 to 4096 (0x1000)",
            ),
            (
                "mem a 0 4097",
                "mem: len 4097 is out of range; use 1 to 4096 (0x1000)",
            ),
            (
                "mem a 0x1_0000_0000_0000_0000",
                "mem: gpa 0x1_0000_0000_0000_0000 is too large; use 0 to 0xffffffffffffffff",
            ),
            (
                "mem a 0xffffffffffffffff 2",
                "mem: gpa 0xffffffffffffffff + len 0x2 runs past the end of the address space",
            ),
            ("mem a 0 1 2", "usage: mem <guest> <gpa> [len]"),
            ("loglevel", "usage: loglevel <error|warn|info|debug|trace>"),
            (
                "loglevel verbose",
                "loglevel: \"verbose\" is not one of error, warn, info, debug or trace",
            ),
        ];
        for (line, want) in bad {
            assert_eq!(parse(line), Err(ParseError(want.to_string())), "{line:?}");
        }
    }

    #[test]
    fn help_lists_every_command() {
        let help = run("help").join("\n");
        for word in [
            "list", "info", "regs", "mem", "exits", "log", "pause", "resume", "stop", "restart",
            "stats", "loglevel", "poweroff",
        ] {
            assert!(help.contains(&format!("  {word}")), "{word}");
        }
    }

    #[test]
    fn unknown_guest_names_the_known_ones() {
        for cmd in [
            "info", "regs", "mem", "exits", "log", "pause", "resume", "stop", "restart",
        ] {
            let line = if cmd == "mem" {
                format!("{cmd} zz 0")
            } else {
                format!("{cmd} zz")
            };
            assert_eq!(
                run(&line),
                ["no guest named \"zz\"; the guests are a, linux-2"],
                "{cmd}"
            );
        }
    }

    #[test]
    fn list_is_a_table() {
        assert_eq!(
            run("list"),
            [
                "NAME     STATE     VCPUS  CPUS  MEMORY     UPTIME         EXITS",
                "a        running       1  any      64K    1:02:03         12345",
                "linux-2  stopped       1  1,3     512M    0:00:59             7",
            ]
        );
    }

    #[test]
    fn info_shows_the_configuration_escaped() {
        let lines = run("info a");
        assert_eq!(lines[0], "a: running, up 1:02:03, 2 restarts");
        assert!(lines.contains(&"  kernel linux/bzImage (linux)".to_string()));
        assert!(lines.contains(&"  cmdline \"console=ttyS0\\x1b\"".to_string()));
        assert!(lines.contains(&"  console output dropped: 5 bytes".to_string()));
    }

    #[test]
    fn regs_layout() {
        let lines = run("regs a");
        assert_eq!(
            lines[..8],
            [
                "a vcpu 0:",
                "rax 0000000000000000  rcx 1111111111111111  rdx 2222222222222222  rbx 3333333333333333",
                "rsp 4444444444444444  rbp 5555555555555555  rsi 6666666666666666  rdi 7777777777777777",
                "r8  8888888888888888  r9  9999999999999999  r10 aaaaaaaaaaaaaaaa  r11 bbbbbbbbbbbbbbbb",
                "r12 cccccccccccccccc  r13 dddddddddddddddd  r14 eeeeeeeeeeeeeeee  r15 ffffffffffffffff",
                "rip ffffffff81000000  rflags 0000000000000202",
                "cr0 0000000080050033  cr2 0000000000000000  cr3 0000000000001000  cr4 0000000000000020",
                "efer 0000000000000d01",
            ]
        );
        assert_eq!(
            lines[8],
            "cs   0010  base 0000000000000000  limit ffffffff  access 0a09b"
        );
        assert!(lines[15].starts_with("ldtr 0000"));
        assert_eq!(
            lines[16],
            "gdtr base 0000000000005000  limit 0027   idtr base 0000000000006000  limit 0fff"
        );
        assert_eq!(lines.len(), 17);
        assert_eq!(run("regs a 1"), ["regs a: no vcpu 1; the guest has 1"]);
    }

    #[test]
    fn mem_dumps_and_checks_bounds() {
        assert_eq!(
            run("mem a 0x41 20"),
            [
                "0000000000000041  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  |ABCDEFGHIJKLMNOP|",
                "0000000000000051  51 52 53 54                                       |QRST|",
            ]
        );
        assert_eq!(run("mem a 0").len(), 16, "256 bytes by default");
        assert_eq!(run("mem a 0 4096").len(), 256);
        // The last bytes of RAM read; one past does not.
        assert_eq!(run("mem a 0xfff0 16").len(), 1);
        assert_eq!(
            run("mem a 0xfff0 17"),
            ["mem a: 0xfff0..=0x10000 is past the guest's RAM, which ends at 0x10000"]
        );
        assert_eq!(
            run("mem a 0xffffffffffffff00"),
            ["mem a: 0xffffffffffffff00..=0xffffffffffffffff is past the guest's RAM, which ends at 0x10000"]
        );
        assert_eq!(
            run("mem linux-2 0"),
            ["mem linux-2: the guest has no memory now"]
        );
    }

    #[test]
    fn exits_are_sorted_by_count() {
        assert_eq!(
            run("exits a"),
            [
                "a: 1000 exits",
                "  io              900   90.0%",
                "  cpuid            99    9.9%",
                "  hlt               1    0.1%",
            ]
        );
    }

    #[test]
    fn log_replays_the_tail_as_safe_lines() {
        assert_eq!(
            run("log a"),
            [
                "--- a: the last 13 bytes of output ---",
                "[a] one",
                "[a] two\\x07",
                "[a] $ ",
                "--- a: end of output ---",
            ]
        );
        assert_eq!(run("log linux-2"), ["linux-2 has printed nothing yet"]);
    }

    #[test]
    fn actions_reach_the_target_and_report() {
        let mut fake = Fake::new();
        assert_eq!(run_on(&mut fake, "pause a"), ["a: paused"]);
        assert_eq!(run_on(&mut fake, "pause a"), ["pause a: already paused"]);
        assert_eq!(run_on(&mut fake, "resume a"), ["a: resumed"]);
        assert_eq!(run_on(&mut fake, "stop linux-2"), ["linux-2: stopped"]);
        assert_eq!(run_on(&mut fake, "restart a"), ["a: restarting"]);
        assert_eq!(
            fake.calls,
            [
                "pause a",
                "pause a",
                "resume a",
                "stop linux-2",
                "restart a"
            ]
        );
        assert_eq!(
            run_on(&mut fake, "loglevel warn"),
            ["log level is now warn"]
        );
        assert_eq!(fake.level, Some(LogLevel::Warn));
        assert!(!fake.poweroff);
        assert_eq!(run_on(&mut fake, "poweroff"), ["powering off"]);
        assert!(fake.poweroff);
        // A bad command changes nothing.
        let mut fake = Fake::new();
        run_on(&mut fake, "stop");
        run_on(&mut fake, "poweroff please");
        assert!(fake.calls.is_empty() && !fake.poweroff);
    }

    #[test]
    fn stats_lines() {
        assert_eq!(
            run("stats"),
            [
                "up 0:01:01, memory 100M free of 1G, largest free block 64M (64.0% of the free memory)",
                "console: 3 output bytes dropped, 0 input bytes dropped",
                "cpu0   in guests  93.5%  switches 42",
            ]
        );
    }

    fn type_into(monitor: &mut Monitor, fake: &mut Fake, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        monitor.feed(bytes, fake, &mut |l| lines.push(l.to_string()));
        lines
    }

    #[test]
    fn the_editor_handles_backspace_escapes_and_controls() {
        let mut monitor = Monitor::new();
        let mut fake = Fake::new();
        // Typos fixed with DEL and backspace; an arrow key (CSI A), an SS3
        // key, Alt-x and stray controls are swallowed; CRLF is one Enter.
        let lines = type_into(
            &mut monitor,
            &mut fake,
            b"lsx\x7f\x08\x1b[Ais\x1bOP\x1bx\x07\x00t\xff\r\n",
        );
        assert_eq!(lines[0], "(ferrovisor) list");
        assert_eq!(lines.len(), 4);
        assert_eq!(monitor.prompt(), PROMPT);
        // Ctrl-U empties the line.
        type_into(&mut monitor, &mut fake, b"stats\x15");
        assert_eq!(monitor.prompt(), PROMPT);
        // A long CSI with parameters.
        let lines = type_into(&mut monitor, &mut fake, b"\x1b[1;5;200~help\r");
        assert_eq!(lines[0], "(ferrovisor) help");
        // An empty line prints only the prompt line.
        assert_eq!(type_into(&mut monitor, &mut fake, b"\r"), ["(ferrovisor) "]);
    }

    #[test]
    fn an_over_long_line_is_refused_once_and_discarded() {
        let mut monitor = Monitor::new();
        let mut fake = Fake::new();
        let mut input = b"poweroff".to_vec();
        input.extend(std::iter::repeat_n(b' ', MONITOR_LINE_MAX));
        input.extend_from_slice(b"more text\r");
        let lines = type_into(&mut monitor, &mut fake, &input);
        assert_eq!(
            lines,
            ["monitor: line longer than 120 characters discarded; press Enter"]
        );
        assert!(!fake.poweroff);
        // The next line works.
        let lines = type_into(&mut monitor, &mut fake, b"stats\r");
        assert_eq!(lines[0], "(ferrovisor) stats");
    }

    proptest! {
        /// Random bytes into the monitor: no panic, the line stays within
        /// its limit, and every answer is one printable line.
        #[test]
        fn random_bytes_into_the_monitor(
            chunks in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![any::<u8>(), Just(b'\r'), Just(0x1b), Just(b'['), 0x20u8..0x7f],
                    0..200,
                ),
                0..10,
            ),
        ) {
            let mut monitor = Monitor::new();
            let mut fake = Fake::new();
            for chunk in &chunks {
                let lines = type_into(&mut monitor, &mut fake, chunk);
                for line in &lines {
                    prop_assert!(line.bytes().all(|b| b == b'\t' || (0x20..=0x7E).contains(&b)), "{:?}", line);
                }
                prop_assert!(monitor.prompt().len() <= PROMPT.len() + MONITOR_LINE_MAX);
            }
        }

        /// Random words into the parser: no panic, errors are one line.
        #[test]
        fn random_command_lines_parse_or_say_why(line in "[a-z0-9x_ \\t-]{0,60}") {
            if let Err(e) = parse(&line) {
                prop_assert!(!e.0.contains('\n') && !e.0.is_empty());
            }
        }
    }
}

/// The whole path: typed bytes through the router to the monitor, its
/// answers and the guests' output through the mux to the screen.
#[test]
fn end_to_end_switching_and_monitor() {
    let mut mux = Mux::new(PAUSE);
    let lines = mux.add_source("console", SourceKind::Host, OutputRing::new(1 << 16, 0));
    let g = mux.add_source("g", SourceKind::Guest, OutputRing::new(4096, 4096));
    let mut router = InputRouter::new(0x01);
    router.add_guest(g, "g");
    let mut monitor = Monitor::new();
    let mut to_guest = Vec::new();
    let mut to_monitor = Vec::new();
    let mut type_bytes = |mux: &mut Mux, bytes: &[u8], to_monitor: &mut Vec<u8>| {
        router.feed(bytes, &mut |r| match r {
            Routed::Guest(_, b) => to_guest.extend_from_slice(b),
            Routed::Monitor(b) => to_monitor.extend_from_slice(b),
            Routed::FocusChanged {
                focus,
                announcement,
            } => {
                mux.set_focus(focus);
                mux.write(lines, announcement.as_bytes(), 0);
                mux.write(lines, b"\n", 0);
            }
        });
    };
    type_bytes(&mut mux, b"\x01\x01\x01ls\r\x01\x01\x01", &mut to_monitor);
    struct None_;
    impl MonitorTarget for None_ {
        fn guests(&self) -> Vec<GuestSummary> {
            Vec::new()
        }
        fn info(&self, _: &str) -> Option<GuestInfo> {
            None
        }
        fn regs(&mut self, _: &str, _: u32) -> Result<RegisterSnapshot, String> {
            Err("x".into())
        }
        fn read_memory(&mut self, _: &str, _: u64, _: &mut [u8]) -> Result<(), MemError> {
            Err(MemError::NoMemory)
        }
        fn exits(&self, _: &str) -> Option<ExitCounts> {
            None
        }
        fn log(&self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn pause(&mut self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn resume(&mut self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn stop(&mut self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn restart(&mut self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn stats(&self) -> HostStats {
            HostStats::default()
        }
        fn set_log_level(&mut self, _: LogLevel) -> Result<(), String> {
            Ok(())
        }
        fn poweroff(&mut self) {}
    }
    type_bytes(&mut mux, b"info x\r", &mut to_monitor);
    monitor.feed(&to_monitor, &mut None_, &mut |l| {
        mux.write(lines, l.as_bytes(), 0);
        mux.write(lines, b"\n", 0);
    });
    mux.set_prompt(monitor.prompt().as_bytes());
    let screen = drain(&mut mux, 0, 16);
    assert_eq!(to_guest, b"ls\r");
    assert_eq!(
        screen,
        "console: input goes to g (ctrl-a 3 times switches)\r\n\
         console: input goes to the monitor; type help (ctrl-a 3 times switches)\r\n\
         (ferrovisor) info x\r\n\
         no guest named \"x\"; there are no guests\r\n\
         \r\x1b[K(ferrovisor) "
    );
}
