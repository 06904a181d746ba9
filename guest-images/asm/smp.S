# smp: a Multiboot v1 guest that starts its application processors the
# way an OS does on a PC (Intel SDM Vol. 3A, 9.4 "Multiple-Processor (MP)
# Initialization") and checks that they run together. It boots under
# Ferrovisor (`format = "multiboot"`) and, unchanged, under plain QEMU
# (`qemu-system-x86_64 -kernel smp.bin -smp 4`), which loads Multiboot
# kernels through the header's a.out-kludge address fields.
#
# The bootstrap processor (BSP):
# - reads the logical processor count N from CPUID.1:EBX[23:16] (1 when
#   CPUID.1:EDX.HTT is clear) and prints `smp: bsp apic id <id>, N cpus`;
# - copies the 16-bit AP trampoline to 0x8000, enables its xAPIC, sends
#   INIT (assert, all excluding self), waits 10 ms on the PIT (measuring
#   the TSC and the APIC timer meanwhile), then two start-up IPIs with
#   vector 0x08 200 us apart, waiting for the ICR's delivery status to
#   go idle before each write (SDM Vol. 3A, 9.4.4.1);
# - waits at most 2 s for the N-1 APs (`smp: all N cpus up`, or
#   `smp: FAILED only M of N cpus arrived` and the end);
# - lock test: every CPU adds 1 to a shared counter 2000 times under a
#   test-and-test-and-set spin lock (PAUSE while it waits); the BSP
#   prints `smp: lock counter X of Y` (Y = 2000 N);
# - IPI round trip: sends fixed IPIs (vector 0x40, physical destination
#   APIC ID 1), which AP 1's handler EOIs and answers with vector 0x41 to
#   APIC ID 0; times 64 round trips with RDTSC, waiting in HLT (a periodic
#   APIC timer tick bounds each wait at 1 s), and prints
#   `smp: ipi round trip median M ticks average A ticks` (or a
#   `smp: ipi round trip skipped: ...` line with one CPU); then the same
#   with self-IPIs (vector 0x42): `smp: self ipi median M ticks average A
#   ticks`;
# - prints `smp: done` and powers off through ACPI: SLP_TYP 5 with SLP_EN
#   at PM1a control 0x604 (Ferrovisor's S5), then SLP_TYP 0 there and at
#   0xB004 (QEMU's S5 on q35 and on pc, whose PIIX4 PM block the BIOS puts
#   at 0xB000).
# Each application processor (AP), from the trampoline: real mode to
# protected mode with the guest's GDT, a stack of its own by an index it
# takes atomically, its xAPIC enabled, `smp: ap apic id K up` printed under
# the console lock, the arrival count bumped; then the lock test; AP 1
# serves the IPI round trips; every AP ends in a `cli; hlt` loop.
#
# ferrovisor: load_address=0x100000 mode=protected
.include "fv.inc"
.include "lib32.inc"

# Multiboot v1 header (Multiboot Specification 0.6.96, 3.1): flags bit 16,
# the a.out-kludge address fields are valid, so the image loads as it is.
.equ MB_MAGIC, 0x1BADB002
.equ MB_FLAGS, 1 << 16

# This guest's GDT selectors (its own GDT: Ferrovisor's loader and QEMU's
# Multiboot ROM put their code segments at different selectors).
.equ CODE_SELECTOR, 0x08
.equ DATA_SELECTOR, 0x10
# Gate type byte: present, DPL 0, 32-bit interrupt gate (SDM Vol. 3A,
# 6.11, Figure 6-2).
.equ GATE_INTERRUPT, 0x8E

# The local APIC in xAPIC mode (SDM Vol. 3A, 11.4.1, Table 11-1).
.equ APIC, 0xFEE00000
.equ APIC_ID, APIC + 0x20
.equ APIC_TPR, APIC + 0x80
.equ APIC_EOI, APIC + 0xB0
.equ APIC_SVR, APIC + 0xF0
.equ APIC_ICR_LOW, APIC + 0x300
.equ APIC_ICR_HIGH, APIC + 0x310
.equ APIC_LVT_TIMER, APIC + 0x320
.equ APIC_TIMER_INITIAL, APIC + 0x380
.equ APIC_TIMER_CURRENT, APIC + 0x390
.equ APIC_TIMER_DIVIDE, APIC + 0x3E0
.equ SVR_ENABLE, 1 << 8
.equ LVT_MASKED, 1 << 16
.equ LVT_PERIODIC, 1 << 17
.equ TIMER_DIVIDE_1, 0xB
# ICR low (11.6.1, Figure 11-12): vector, delivery mode, delivery status,
# level, destination shorthand; the destination is ICR high bits 31:24.
.equ ICR_BUSY, 1 << 12
.equ ICR_ASSERT, 1 << 14
.equ ICR_FIXED, 0 << 8
.equ ICR_INIT, 5 << 8
.equ ICR_STARTUP, 6 << 8
.equ ICR_SELF, 1 << 18
.equ ICR_ALL_BUT_SELF, 3 << 18

# Where things go in the guest's low memory: the trampoline at the page the
# start-up vector names (CS = vector << 8, IP = 0), the APs' stacks below
# the BSP's (fv.inc's STACK_TOP), one page each.
.equ TRAMPOLINE, 0x8000
.equ SIPI_VECTOR, TRAMPOLINE >> 12
.equ AP_STACKS, 0x40000
.equ AP_STACK_SIZE, 0x1000
.equ MAX_CPUS, 64
.equ MAX_APS, MAX_CPUS - 1

# The interrupt vectors this guest uses.
.equ VECTOR_PING, 0x40      # BSP -> AP 1
.equ VECTOR_PONG, 0x41      # AP 1 -> BSP
.equ VECTOR_SELF, 0x42      # BSP -> itself
.equ VECTOR_TICK, 0x43      # the BSP's APIC timer, the waits' watchdog
.equ VECTOR_SPURIOUS, 0xFF

# The 8254's channel 2 (its gate and OUT at port 0x61) counts at
# 1 193 182 Hz: 11932 counts are 10 ms, 239 are 200 us.
.equ PIT_10MS, 11932
.equ PIT_200US, 239
.equ PIT_SPIN_LIMIT, 0x1000000

.equ LOCK_ROUNDS, 2000
.equ IPI_ROUNDS, 64         # the median/average code assumes 64
.equ ARRIVAL_WAIT, 200      # in 10 ms units: 2 s
.equ LOCK_WAIT, 1000        # 10 s
.equ IPI_WAIT, 100          # 1 s per round trip
.equ ICR_SPIN_LIMIT, 0x100000

# ACPI PM1a control (see the top).
.equ PM1A_CNT, 0x604
.equ PIIX4_PM1A_CNT, 0xB004
.equ SLP_EN, 1 << 13
.equ SLP_TYP_S5, 5 << 10

# SPIN_LOCK lock: takes the test-and-test-and-set lock at `lock` (a
# dword, 0 free): XCHG to take it, and while another CPU holds it, PAUSE
# and read until it looks free. Preserves every register.
.macro SPIN_LOCK lock
    push eax
.Ltry\@:
    mov eax, 1
    xchg [\lock], eax
    test eax, eax
    jz .Ltaken\@
.Lwait\@:
    pause
    cmp dword ptr [\lock], 0
    jne .Lwait\@
    jmp .Ltry\@
.Ltaken\@:
    pop eax
.endm

# SPIN_UNLOCK lock: releases it (a plain store releases on x86).
.macro SPIN_UNLOCK lock
    mov dword ptr [\lock], 0
.endm

# IF_PAST label: jumps to `label` once the TSC has reached [deadline].
# Preserves every register.
.macro IF_PAST label
    push eax
    push edx
    rdtsc
    sub eax, [deadline]
    sbb edx, [deadline + 4]
    pop edx
    pop eax
    jnc \label
.endm

    .text
    .globl _start
_start:
    cld
    jmp bsp_main

    .balign 4
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long (-(MB_MAGIC + MB_FLAGS)) & 0xFFFFFFFF
    .long multiboot_header      # header_addr
    .long _start                # load_addr: the image's first byte
    .long 0                     # load_end_addr: the whole file
    .long 0                     # bss_end_addr: no bss
    .long _start                # entry_addr

bsp_main:
    cli
    # Multiboot leaves ESP undefined (Ferrovisor's loader passes 0): the
    # stack first, as the far return below uses it.
    mov esp, STACK_TOP
    lgdt [gdtr]
    push CODE_SELECTOR
    push offset 1f
    retf
1:  mov ax, DATA_SELECTOR
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    # Every 8259 input masked: only the APICs interrupt this guest.
    mov al, 0xFF
    out 0x21, al
    out 0xA1, al
    call build_idt
    lidt [idtr]
    call lapic_enable

    # N: CPUID.1:EBX[23:16] when CPUID.1:EDX.HTT says it is valid.
    mov eax, 1
    cpuid
    mov eax, 1
    test edx, 1 << 28
    jz 2f
    shr ebx, 16
    movzx eax, bl
    test eax, eax
    jnz 2f
    mov eax, 1
2:  cmp eax, MAX_CPUS
    jbe 3f
    mov eax, MAX_CPUS
3:  mov [cpus], eax
    dec eax
    mov [expected_aps], eax

    PRINT "smp: bsp apic id "
    call apic_id
    call put_dec
    PRINT ", "
    mov eax, [cpus]
    call put_dec
    PRINT " cpus\n"

    # The trampoline to 0x8000 before any AP can start.
    mov esi, offset trampoline_start
    mov edi, TRAMPOLINE
    mov ecx, offset trampoline_end - trampoline_start
    rep movsb

    # INIT, then the 10 ms wait, which also measures the TSC and the APIC
    # timer for the deadlines and the watchdog tick below.
    mov dword ptr [APIC_TIMER_DIVIDE], TIMER_DIVIDE_1
    mov dword ptr [APIC_LVT_TIMER], LVT_MASKED | VECTOR_TICK
    mov dword ptr [APIC_TIMER_INITIAL], 0xFFFFFFFF
    rdtsc
    mov ebx, eax
    cmp dword ptr [expected_aps], 0
    je 4f
    mov eax, ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT
    xor edx, edx
    call send_ipi
4:  mov ecx, PIT_10MS
    call pit_wait
    rdtsc
    sub eax, ebx
    jnz 5f
    inc eax
5:  mov [tsc_10ms], eax
    mov ecx, [APIC_TIMER_CURRENT]
    mov eax, 0xFFFFFFFF
    sub eax, ecx
    mov [apic_10ms], eax
    mov dword ptr [APIC_TIMER_INITIAL], 0

    cmp dword ptr [expected_aps], 0
    je .Lall_up
    # Two start-up IPIs, 200 us apart.
    mov eax, ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | SIPI_VECTOR
    xor edx, edx
    call send_ipi
    mov ecx, PIT_200US
    call pit_wait
    call send_ipi
    mov ecx, PIT_200US
    call pit_wait
    call icr_wait_idle

    # At most 2 s for the N-1 APs.
    mov eax, ARRIVAL_WAIT
    call set_deadline
6:  mov eax, [arrived]
    cmp eax, [expected_aps]
    jae .Lall_up
    pause
    IF_PAST .Lmissing
    jmp 6b
.Lmissing:
    SPIN_LOCK console_lock
    PRINT "smp: FAILED only "
    mov eax, [arrived]
    inc eax
    call put_dec
    PRINT " of "
    mov eax, [cpus]
    call put_dec
    PRINT " cpus arrived\n"
    SPIN_UNLOCK console_lock
    jmp .Ldone

.Lall_up:
    SPIN_LOCK console_lock
    PRINT "smp: all "
    mov eax, [cpus]
    call put_dec
    PRINT " cpus up\n"
    SPIN_UNLOCK console_lock

    # The lock test: the APs wait for `go`.
    mov dword ptr [go], 1
    call lock_rounds
    mov eax, LOCK_WAIT
    call set_deadline
7:  mov eax, [lock_done]
    cmp eax, [expected_aps]
    jae 8f
    pause
    IF_PAST .Llock_late
    jmp 7b
.Llock_late:
    SPIN_LOCK console_lock
    PRINT "smp: FAILED lock test: only "
    mov eax, [lock_done]
    inc eax
    call put_dec
    PRINT " cpus finished\n"
    SPIN_UNLOCK console_lock
8:  SPIN_LOCK console_lock
    PRINT "smp: lock counter "
    mov eax, [counter]
    call put_dec
    PRINT " of "
    mov eax, [cpus]
    imul eax, eax, LOCK_ROUNDS
    call put_dec
    PRINT "\n"
    SPIN_UNLOCK console_lock

    # The IPI tests wait in HLT with interrupts on; a periodic tick (10 ms
    # as measured, or an arbitrary count where the timer did not count)
    # wakes the waits to look at the clock.
    mov eax, [apic_10ms]
    test eax, eax
    jnz 9f
    mov eax, 0x100000
9:  mov dword ptr [APIC_LVT_TIMER], LVT_PERIODIC | VECTOR_TICK
    mov [APIC_TIMER_INITIAL], eax
    sti

    cmp dword ptr [expected_aps], 0
    jne 10f
    SPIN_LOCK console_lock
    PRINT "smp: ipi round trip skipped: 1 cpu\n"
    SPIN_UNLOCK console_lock
    jmp .Lself_ipi
10: cmp byte ptr [ap_seen + 1], 0
    jne 11f
    SPIN_LOCK console_lock
    PRINT "smp: ipi round trip skipped: no cpu has apic id 1\n"
    SPIN_UNLOCK console_lock
    jmp .Lself_ipi
11: xor edi, edi
12: mov ebx, [pongs]
    mov eax, IPI_WAIT
    call set_deadline
    mov eax, ICR_ASSERT | ICR_FIXED | VECTOR_PING
    mov edx, 1 << 24
    call icr_wait_idle
    push eax
    push edx
    rdtsc
    mov [round_start], eax
    mov [round_start + 4], edx
    pop edx
    pop eax
    call send_ipi
    mov esi, offset pongs
    call wait_change
    jc .Lno_pong
    mov [samples + edi * 4], eax
    inc edi
    cmp edi, IPI_ROUNDS
    jb 12b
    SPIN_LOCK console_lock
    mov esi, offset round_trip_text
    call print_samples
    SPIN_UNLOCK console_lock
    jmp 13f
.Lno_pong:
    SPIN_LOCK console_lock
    PRINT "smp: FAILED ipi round trip: no answer from apic id 1 within 1 s\n"
    SPIN_UNLOCK console_lock
    # AP 1 leaves its loop at the next ping (its answer is not waited for).
13: mov dword ptr [ipi_done], 1
    mov eax, ICR_ASSERT | ICR_FIXED | VECTOR_PING
    mov edx, 1 << 24
    call send_ipi

.Lself_ipi:
    xor edi, edi
14: mov ebx, [self_hits]
    mov eax, IPI_WAIT
    call set_deadline
    mov eax, ICR_SELF | ICR_ASSERT | ICR_FIXED | VECTOR_SELF
    xor edx, edx
    call icr_wait_idle
    push eax
    push edx
    rdtsc
    mov [round_start], eax
    mov [round_start + 4], edx
    pop edx
    pop eax
    call send_ipi
    mov esi, offset self_hits
    call wait_change
    jc .Lno_self
    mov [samples + edi * 4], eax
    inc edi
    cmp edi, IPI_ROUNDS
    jb 14b
    SPIN_LOCK console_lock
    mov esi, offset self_ipi_text
    call print_samples
    SPIN_UNLOCK console_lock
    jmp 15f
.Lno_self:
    SPIN_LOCK console_lock
    PRINT "smp: FAILED self ipi: not delivered within 1 s\n"
    SPIN_UNLOCK console_lock
15: cli
    mov dword ptr [APIC_LVT_TIMER], LVT_MASKED | VECTOR_TICK
    mov dword ptr [APIC_TIMER_INITIAL], 0

.Ldone:
    SPIN_LOCK console_lock
    PRINT "smp: done\n"
    # Power off; the lock is kept so that no AP prints after this line.
    mov dx, PM1A_CNT
    mov ax, SLP_TYP_S5 | SLP_EN
    out dx, ax
    mov ax, SLP_EN
    out dx, ax
    mov dx, PIIX4_PM1A_CNT
    out dx, ax
    jmp park

# The AP trampoline, copied to TRAMPOLINE: an AP starts here in real mode
# with CS = TRAMPOLINE >> 4 and IP = 0, loads the guest's GDT (the
# pseudo-descriptor is in the copy, the table where the image is), turns
# on protection and jumps to ap_main with a 32-bit far jump.
    .pushsection .text, 4
    .code16
trampoline_start:
    cli
    mov ax, cs
    mov ds, ax
    data32 lgdt [trampoline_gdtr - trampoline_start]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    .byte 0x66, 0xEA            # jmp far ptr16:32
    .long ap_main
    .word CODE_SELECTOR
    .balign 4
trampoline_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:
    .code32
    .popsection

    .pushsection .text, 1
ap_main:
    mov ax, DATA_SELECTOR
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    cld
    # A stack of its own: index i gets the page below AP_STACKS + (i+1) pages.
    mov eax, 1
    lock xadd [ap_next], eax
    cmp eax, MAX_APS
    jae park
    inc eax
    shl eax, 12
    add eax, AP_STACKS
    mov esp, eax
    lidt [idtr]
    call lapic_enable
    call apic_id
    mov ebx, eax
    mov byte ptr [ap_seen + ebx], 1
    SPIN_LOCK console_lock
    PRINT "smp: ap apic id "
    call put_dec
    PRINT " up\n"
    SPIN_UNLOCK console_lock
    lock inc dword ptr [arrived]
1:  pause
    cmp dword ptr [go], 0
    je 1b
    call lock_rounds
    lock inc dword ptr [lock_done]
    cmp ebx, 1
    jne park
    # AP 1 serves the pings until the BSP says it is done.
2:  cli
    cmp dword ptr [ipi_done], 0
    jne park
    sti
    hlt
    jmp 2b

# park: the end of every AP (and of the BSP if the power-off is ignored).
park:
    cli
    hlt
    jmp park

# build_idt: every vector to `unexpected`, then this guest's own.
build_idt:
    pushad
    xor ecx, ecx
1:  mov eax, offset unexpected
    call set_gate
    inc ecx
    cmp ecx, 256
    jb 1b
    mov ecx, VECTOR_PING
    mov eax, offset on_ping
    call set_gate
    mov ecx, VECTOR_PONG
    mov eax, offset on_pong
    call set_gate
    mov ecx, VECTOR_SELF
    mov eax, offset on_self
    call set_gate
    mov ecx, VECTOR_TICK
    mov eax, offset on_tick
    call set_gate
    mov ecx, VECTOR_SPURIOUS
    mov eax, offset on_spurious
    call set_gate
    popad
    ret

# set_gate: IDT entry ECX (0..255) to an interrupt gate for EAX.
set_gate:
    push eax
    push edx
    lea edx, [idt + ecx * 8]
    mov [edx], ax
    mov word ptr [edx + 2], CODE_SELECTOR
    mov byte ptr [edx + 4], 0
    mov byte ptr [edx + 5], GATE_INTERRUPT
    shr eax, 16
    mov [edx + 6], ax
    pop edx
    pop eax
    ret

# lapic_enable: software-enables this CPU's xAPIC (spurious vector 0xFF)
# and accepts every priority.
lapic_enable:
    mov dword ptr [APIC_SVR], SVR_ENABLE | VECTOR_SPURIOUS
    mov dword ptr [APIC_TPR], 0
    ret

# apic_id: EAX = this CPU's APIC ID (ID register bits 31:24).
apic_id:
    mov eax, [APIC_ID]
    shr eax, 24
    ret

# icr_wait_idle: waits (bounded) until the ICR's delivery status is idle.
# Preserves every register. The register is read with a MOV, as operating
# systems do (Ferrovisor emulates MOV forms on device registers only).
icr_wait_idle:
    push eax
    push ecx
    mov ecx, ICR_SPIN_LIMIT
1:  mov eax, [APIC_ICR_LOW]
    test eax, ICR_BUSY
    jz 2f
    pause
    dec ecx
    jnz 1b
2:  pop ecx
    pop eax
    ret

# send_ipi: waits for the ICR to be idle, then sends EAX (ICR low) to
# EDX (ICR high). Preserves every register.
send_ipi:
    call icr_wait_idle
    mov [APIC_ICR_HIGH], edx
    mov [APIC_ICR_LOW], eax
    ret

# pit_wait: waits ECX (1..65535) counts of the PIT's channel 2 in mode 0,
# gated through port 0x61, until its OUT goes high (bounded).
# Preserves every register.
pit_wait:
    push eax
    push ecx
    in al, 0x61
    and al, 0xFC                # gate low, speaker off
    out 0x61, al
    mov al, 0xB0                # channel 2, low then high byte, mode 0
    out 0x43, al
    mov al, cl
    out 0x42, al
    mov al, ch
    out 0x42, al
    in al, 0x61
    or al, 1                    # gate high: count
    out 0x61, al
    mov ecx, PIT_SPIN_LIMIT
1:  in al, 0x61
    test al, 0x20               # OUT2
    jnz 2f
    dec ecx
    jnz 1b
2:  pop ecx
    pop eax
    ret

# set_deadline: [deadline] = now + EAX * 10 ms (as the TSC measured).
# Preserves every register.
set_deadline:
    push eax
    push ecx
    push edx
    mul dword ptr [tsc_10ms]
    mov ecx, eax
    push edx
    rdtsc
    add eax, ecx
    pop ecx
    adc edx, ecx
    mov [deadline], eax
    mov [deadline + 4], edx
    pop edx
    pop ecx
    pop eax
    ret

# wait_change: waits in HLT, interrupts on, until the dword at ESI differs
# from EBX; returns with CF clear and EAX = TSC ticks since [round_start]
# (0xFFFFFFFF if more), or CF set once [deadline] passed.
wait_change:
    push edx
1:  cli
    cmp [esi], ebx
    jne 2f
    IF_PAST 3f
    sti
    hlt
    jmp 1b
2:  rdtsc
    sti
    sub eax, [round_start]
    sbb edx, [round_start + 4]
    jz 4f
    mov eax, 0xFFFFFFFF
4:  clc
    pop edx
    ret
3:  sti
    stc
    pop edx
    ret

# lock_rounds: LOCK_ROUNDS times, takes the counter lock and adds 1 to the
# counter with a plain read and write a few instructions apart, which
# only the lock keeps exact (without it, CPUs that run at once lose
# updates).
lock_rounds:
    push eax
    push ecx
    push edx
    mov ecx, LOCK_ROUNDS
1:  SPIN_LOCK counter_lock
    mov eax, [counter]
    mov edx, 16
2:  dec edx
    jnz 2b
    inc eax
    mov [counter], eax
    SPIN_UNLOCK counter_lock
    dec ecx
    jnz 1b
    pop edx
    pop ecx
    pop eax
    ret

# print_samples: sorts the IPI_ROUNDS samples, works out their median and
# average, and only then prints the line: the text at ESI, then "median M
# ticks average A ticks". Every instruction of the work comes before the
# line's first byte, so the line goes out without a pause in it: a console
# shows a partial line once its writer has been quiet a while (Ferrovisor's
# after 20 ms), and under an emulator on a busy host the sort alone can
# take that long.
    .pushsection .text, 2
round_trip_text:
    .asciz "smp: ipi round trip "
self_ipi_text:
    .asciz "smp: self ipi "
    .popsection

print_samples:
    pushad
    # Insertion sort, ascending.
    mov ecx, 1
1:  cmp ecx, IPI_ROUNDS
    jae 4f
    mov eax, [samples + ecx * 4]
    mov edx, ecx
2:  test edx, edx
    jz 3f
    mov ebx, [samples + edx * 4 - 4]
    cmp ebx, eax
    jbe 3f
    mov [samples + edx * 4], ebx
    dec edx
    jmp 2b
3:  mov [samples + edx * 4], eax
    inc ecx
    jmp 1b
    # The median of an even count: the mean of the middle two (EBP).
4:  mov eax, [samples + (IPI_ROUNDS / 2) * 4]
    mov ebx, [samples + (IPI_ROUNDS / 2 - 1) * 4]
    sub eax, ebx
    shr eax, 1
    add eax, ebx
    mov ebp, eax
    # The average: a 64-bit sum over 64 samples (EDI).
    xor eax, eax
    xor edx, edx
    xor ecx, ecx
5:  add eax, [samples + ecx * 4]
    adc edx, 0
    inc ecx
    cmp ecx, IPI_ROUNDS
    jb 5b
    shrd eax, edx, 6
    mov edi, eax
    # The line, in one go.
    call fv_puts
    PRINT "median "
    mov eax, ebp
    call put_dec
    PRINT " ticks average "
    mov eax, edi
    call put_dec
    PRINT " ticks\n"
    popad
    ret

# put_dec: writes EAX as an unsigned decimal number. Preserves every
# register.
put_dec:
    pushad
    mov ecx, 10
    xor ebx, ebx
1:  xor edx, edx
    div ecx
    push edx
    inc ebx
    test eax, eax
    jnz 1b
2:  pop eax
    add al, '0'
    call fv_putc
    dec ebx
    jnz 2b
    popad
    ret

# The interrupt handlers (interrupt gates: IF is clear inside).
on_ping:
    mov dword ptr [APIC_EOI], 0
    push eax
    push edx
    mov eax, ICR_ASSERT | ICR_FIXED | VECTOR_PONG
    xor edx, edx                # APIC ID 0
    call send_ipi
    pop edx
    pop eax
    iretd

on_pong:
    lock inc dword ptr [pongs]
    mov dword ptr [APIC_EOI], 0
    iretd

on_self:
    lock inc dword ptr [self_hits]
    mov dword ptr [APIC_EOI], 0
    iretd

on_tick:
    mov dword ptr [APIC_EOI], 0
    iretd

# A spurious interrupt takes no EOI (SDM Vol. 3A, 11.9).
on_spurious:
    iretd

unexpected:
    PRINT "smp: FAILED unexpected interrupt or exception\n"
    jmp park
    .popsection

# Data: the GDT and IDT every CPU loads, the shared counters (the locks
# each on a cache line of its own), the samples.
    .pushsection .text, 3
    .balign 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    # 0x08: code, base 0, 4 GiB, 32-bit
    .quad 0x00CF92000000FFFF    # 0x10: data, base 0, 4 GiB
gdt_end:
    .balign 4
    .word 0
gdtr:
    .word gdt_end - gdt - 1
    .long gdt
    .word 0
idtr:
    .word 256 * 8 - 1
    .long idt
    .balign 64
console_lock:
    .long 0
    .balign 64
counter_lock:
    .long 0
    .balign 64
counter:
    .long 0
cpus:
    .long 0
expected_aps:
    .long 0
ap_next:
    .long 0
arrived:
    .long 0
go:
    .long 0
lock_done:
    .long 0
ipi_done:
    .long 0
pongs:
    .long 0
self_hits:
    .long 0
tsc_10ms:
    .long 0
apic_10ms:
    .long 0
    .balign 8
deadline:
    .quad 0
round_start:
    .quad 0
samples:
    .space IPI_ROUNDS * 4
ap_seen:
    .space 256
    .balign 8
idt:
    .space 256 * 8
    .popsection
