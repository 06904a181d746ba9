# cpuid: the benchmark guest, the VM-exit set of kvm-unit-tests' `vmexit`
# test written for this platform. Each exit kind is timed SAMPLES times, each
# sample with its own pair of TSC reads (LFENCE, then RDTSC) around one
# exit, and printed as the median and the average of its samples, one line
# per kind:
#
#   vmexit <kind>: <n> samples, median <m> ticks, average <a> ticks
#
# The kinds, in the order they run:
#   overhead       the TSC pair around nothing: what the other figures
#                  have taken off (printed as measured, nothing taken off)
#   cpuid          CPUID leaf 0 (exits unconditionally, SDM Vol. 3C,
#                  26.1.2), with the XOR that loads the leaf
#   vmcall         VMCALL with number 0, which no hypervisor defines
#                  (Ferrovisor answers FV_UNKNOWN_CALL, KVM -KVM_ENOSYS;
#                  both go on), with the XOR that loads the number
#   inb_pit        IN AL from port 0x61 (system control port B: PIT channel
#                  2's gate and output), emulated in the hypervisor
#   rdmsr_apicbase RDMSR IA32_APIC_BASE (0x1B): answered by the
#                  hypervisor's local APIC model, no side effect
#   apic_eoi       a write of 0 to the local APIC's EOI register (xAPIC
#                  MMIO, 0xFEE000B0) with nothing in service: an MMIO exit
#                  the hypervisor decodes and gives to its APIC model,
#                  which finds nothing to end
#   irq_window     a self-IPI made pending while RFLAGS.IF = 0 (that ICR
#                  write is not timed), then STI; NOP: from the TSC read
#                  before STI to the first TSC read in the interrupt's
#                  handler, so STI, NOP, the interrupt-window exit, the
#                  injection and the delivery through the IDT
#   wrmsr_tscdeadline
#                  WRMSR IA32_TSC_DEADLINE (0x6E0) with a deadline far
#                  ahead, which only arms the local APIC timer (it never
#                  fires here; it is disarmed after), with the MOV that
#                  loads EDX: the timer write a tickless kernel makes for
#                  every tick. Skipped, as hlt_timer, without TSC-deadline
#                  mode.
#   hlt_timer      HLT woken by the local APIC timer in TSC-deadline mode:
#                  the deadline is armed HLT_DELAY ticks after a TSC read
#                  (a WRMSR exit), the guest halts with interrupts on, and
#                  the sample runs from the deadline to the first TSC read
#                  in the timer's handler: how late the halted vCPU is
#                  woken, the time it sleeps by design taken off. No pair
#                  overhead is taken off this one (it has one TSC read).
#                  Skipped, with a line saying so, where CPUID.01H:ECX[24]
#                  offers no TSC-deadline mode.
#   com1_out       OUT DX, AL to COM1's THR, with the two MOVs that load DX
#                  and AL, a '.' each time; the dots form one console line
#
# How the overhead is taken off: the "overhead" kind runs the same code as
# every other kind with nothing between its two TSC reads (the register
# moves after the first RDTSC and the LFENCE before the second), and its
# median is subtracted from the other kinds' median and average (never
# below 0). What is left is the exit instruction, the instructions that load
# its operands between the reads (named above), and the hypervisor's round
# trip. Under Bochs one TSC tick is one emulated instruction, guest or host
# (the VM exit and entry add nothing), so a figure is the instructions on
# the exit path; the empty loop checks that on every run: 1000 iterations
# of DEC and JNZ must average 2 ticks (`empty loop: ...` line).
#
# The guest depends on nothing a KVM program cannot recreate: long mode
# through the loader's identity map of the first 4 GiB (so the local APIC's
# page at 0xFEE00000 is mapped), its own IDT and stack, the local APIC
# software-enabled here, COM1 output by port writes, and at the end the
# exit code written to port 0xF4 (the isa-debug-exit port, which nothing on
# Ferrovisor's platform claims, so the write is dropped there) right before
# the FV_EXIT hypercall.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

# Samples per exit kind.
.equ SAMPLES, 1000
# Free conventional memory (the loader's layout leaves 0x30000..0xA0000 to
# the guest; the stack grows down from STACK_TOP): the IDT and the samples.
.equ IDT_BASE, 0x30000
.equ SAMPLE_BUF, 0x40000

# The local APIC (SDM Vol. 3A, 11.4.1, Table 11-1): the default base and the
# registers used here.
.equ APIC_BASE, 0xFEE00000
.equ APIC_EOI, 0xB0
.equ APIC_SVR, 0xF0
.equ APIC_ICR_LOW, 0x300
.equ APIC_LVT_TIMER, 0x320
.equ SVR_ENABLE, 0x100
# ICR (11.6.1): destination shorthand 01b, self; fixed delivery, edge.
.equ ICR_SELF, 1 << 18
# LVT timer mode 10b: TSC-deadline (11.5.4.1).
.equ LVT_TSC_DEADLINE, 2 << 17
.equ MSR_APIC_BASE, 0x1B
.equ MSR_TSC_DEADLINE, 0x6E0
# CPUID.01H:ECX bit 24: the APIC timer has the TSC-deadline mode.
.equ CPUID1_ECX_TSC_DEADLINE, 1 << 24

# Vectors: the self-IPI, the timer, and the APIC's spurious vector.
.equ VECTOR_IPI, 0x40
.equ VECTOR_TIMER, 0x41
.equ VECTOR_SPURIOUS, 0xFF

# System control port B (the PIT's channel 2 gate and output).
.equ PORT_B, 0x61
# The 8259 pair's data ports: 0xFF there masks every input (OCW1).
.equ PIC_MASTER_DATA, 0x21
.equ PIC_SLAVE_DATA, 0xA1
# Where the exit code goes just before FV_EXIT: the port of QEMU's
# isa-debug-exit, which a KVM program running this image watches.
.equ DEBUG_EXIT_PORT, 0xF4

# TSC ticks from the TSC read before arming the deadline to the deadline:
# more than the WRMSR exit and the HLT exit take, so the vCPU is asleep
# when it passes (a sample where it passed before HLT is counted and
# reported).
.equ HLT_DELAY, 50000

# A 64-bit interrupt gate (SDM Vol. 3A, 6.14.1): 16 bytes, present, DPL 0,
# type 0xE; the loader's 64-bit code segment.
.equ GATE_BYTES, 16
.equ GATE_INTERRUPT, 0x8E
.equ CODE_SELECTOR, 0x10

# TSC_R8: R8 = the 64-bit TSC, LFENCE first so every earlier instruction
# has completed (Intel SDM Vol. 2B, RDTSC). The first read of a sample.
.macro TSC_R8
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r8, rax
.endm

# TSC_RAX: RAX = the 64-bit TSC, LFENCE first. The second read.
.macro TSC_RAX
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
.endm

# SAMPLE_END: the second read; stores TSC - R8 at [RDI] and moves RDI on.
# Between the two RDTSCs of an empty sample run the SHL, OR and MOV of
# TSC_R8 and this LFENCE (5 ticks under Bochs, the first RDTSC counted):
# that is the "overhead" kind.
.macro SAMPLE_END
    TSC_RAX
    sub rax, r8
    mov [rdi], rax
    add rdi, 8
.endm

# MEASURE_BEGIN ... MEASURE_END "name": SAMPLES samples of the
# instructions between the two macros, each between two TSC reads, then
# the line for `name` with the overhead (R12) taken off (after a newline
# with newline=1). The instructions may use RAX, RBX, RCX, RDX and RSI (RAX
# and RDX hold the TSC when they start; load RBX, RCX and RSI before
# MEASURE_BEGIN) and no label 7. Preserves R12-R15.
.macro MEASURE_BEGIN
    mov edi, SAMPLE_BUF
    mov r9d, SAMPLES
    .balign 16
7:  TSC_R8
.endm

.macro MEASURE_END name, newline=0
    SAMPLE_END
    dec r9d
    jnz 7b
    .if \newline
    PUTC '\n'
    .endif
    .pushsection .text, 2
.Lname\@:
    .asciz "\name"
    .popsection
    lea rsi, [rip + .Lname\@]
    mov ecx, SAMPLES
    mov rdx, r12
    call report
.endm

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    call install_idt
    # Every 8259 input masked: only the local APIC interrupts below arrive.
    mov al, 0xFF
    out PIC_MASTER_DATA, al
    out PIC_SLAVE_DATA, al
    # The local APIC software-enabled (KVM leaves it disabled at reset;
    # Ferrovisor's boot vCPU starts as firmware leaves it, enabled).
    mov ebx, APIC_BASE
    mov dword ptr [rbx + APIC_SVR], SVR_ENABLE | VECTOR_SPURIOUS

    # The empty loop: 1000 iterations of DEC and JNZ, which must average 2
    # ticks under Bochs (one tick an instruction), 256 under QEMU -icount
    # shift=7. Checks that the figures count what they claim.
    TSC_R8
    mov r9d, 1000
    .balign 16
1:  dec r9d
    jnz 1b
    TSC_RAX
    sub rax, r8
    xor edx, edx
    mov ecx, 1000
    div rcx
    PRINT "empty loop: 1000 iterations, average "
    call fv_put_dec
    PRINT " ticks\n"

    # The overhead: nothing between the reads. Its median is R12 from here.
    xor r12d, r12d
    MEASURE_BEGIN
    MEASURE_END "overhead"
    mov r12, rax

    MEASURE_BEGIN
    xor eax, eax
    cpuid
    MEASURE_END "cpuid"

    MEASURE_BEGIN
    xor eax, eax
    vmcall
    MEASURE_END "vmcall"

    MEASURE_BEGIN
    in al, PORT_B
    MEASURE_END "inb_pit"

    mov ecx, MSR_APIC_BASE
    MEASURE_BEGIN
    rdmsr
    MEASURE_END "rdmsr_apicbase"

    mov ebx, APIC_BASE
    xor esi, esi
    MEASURE_BEGIN
    mov dword ptr [rbx + APIC_EOI], esi
    MEASURE_END "apic_eoi"

    call irq_window
    call hlt_timer

    MEASURE_BEGIN
    mov edx, COM1_THR
    mov al, '.'
    out dx, al
    MEASURE_END "com1_out", newline=1
    xor ebx, ebx
    jmp bench_exit

# irq_window: the interrupt-window round trip, SAMPLES times. Each sample
# sends a fixed self-IPI with interrupts off (an ICR write, not timed: the
# vector stays pending in the IRR, and the hypervisor asks for an
# interrupt-window exit), reads the TSC, and opens the window with STI;
# NOP; the handler (on_ipi) reads the TSC into R11.
irq_window:
    mov ebx, APIC_BASE
    mov edi, SAMPLE_BUF
    mov r9d, SAMPLES
1:  xor r11d, r11d
    mov dword ptr [rbx + APIC_ICR_LOW], ICR_SELF | VECTOR_IPI
    TSC_R8
    sti
    nop
    cli
    test r11, r11
    jz 2f
    mov rax, r11
    sub rax, r8
    mov [rdi], rax
    add rdi, 8
    dec r9d
    jnz 1b
    lea rsi, [rip + irq_window_name]
    mov ecx, SAMPLES
    mov rdx, r12
    jmp report
2:  PRINT "vmexit irq_window: FAILED: the self-IPI was not delivered after STI; NOP\n"
    mov ebx, 1
    jmp bench_exit

# hlt_timer: HLT woken by the APIC timer, SAMPLES times (see the top). The
# handler (on_timer) reads the TSC into R11.
hlt_timer:
    mov eax, 1
    cpuid
    test ecx, CPUID1_ECX_TSC_DEADLINE
    jnz 1f
    PRINT "vmexit wrmsr_tscdeadline: skipped: no TSC-deadline timer (CPUID.01H:ECX[24] clear)\n"
    PRINT "vmexit hlt_timer: skipped: no TSC-deadline timer (CPUID.01H:ECX[24] clear)\n"
    ret
1:  mov ebx, APIC_BASE
    mov dword ptr [rbx + APIC_LVT_TIMER], LVT_TSC_DEADLINE | VECTOR_TIMER
    # The timer write alone: a deadline some 2^62 ticks ahead (EDX's
    # bit 30; EAX holds the TSC's low half), so it is armed and never
    # fires, then disarmed.
    mov ecx, MSR_TSC_DEADLINE
    MEASURE_BEGIN
    mov edx, 0x40000000
    wrmsr
    MEASURE_END "wrmsr_tscdeadline"
    mov ecx, MSR_TSC_DEADLINE
    xor eax, eax
    xor edx, edx
    wrmsr
    mov edi, SAMPLE_BUF
    mov r9d, SAMPLES
    xor r13d, r13d                  # samples whose deadline passed before HLT
2:  xor r11d, r11d
    TSC_RAX
    add rax, HLT_DELAY
    mov r8, rax                     # the deadline
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_TSC_DEADLINE
    wrmsr
    TSC_RAX
    cmp rax, r8
    jb 3f
    inc r13d
3:  sti
    hlt
    cli
    test r11, r11                   # woken by something else: halt again
    jz 3b
    mov rax, r11
    sub rax, r8
    jae 4f
    xor eax, eax                    # before the deadline: counted as 0
4:  mov [rdi], rax
    add rdi, 8
    dec r9d
    jnz 2b
    lea rsi, [rip + hlt_timer_name]
    mov ecx, SAMPLES
    xor edx, edx
    call report
    test r13d, r13d
    jz 5f
    PRINT "vmexit hlt_timer: note: the deadline passed before HLT in "
    mov eax, r13d
    call fv_put_dec
    PRINT " samples\n"
5:  ret

# report: sorts the RCX (> 0) samples at SAMPLE_BUF, prints
# "vmexit <name at RSI>: <n> samples, median <m> ticks, average <a> ticks"
# with RDX taken off the median and the average (never below 0), and
# returns the median before that in RAX. Preserves R12-R15.
report:
    push rbx
    push rbp
    mov rbp, rdx                    # what to take off
    mov edi, SAMPLE_BUF
    # The sum, for the average.
    xor eax, eax
    xor edx, edx
1:  add rax, [rdi + rdx * 8]
    inc rdx
    cmp rdx, rcx
    jb 1b
    xor edx, edx
    div rcx
    mov rbx, rax                    # the average
    call sort
    # The median: the middle sample, or the mean of the two middle ones.
    mov rdx, rcx
    shr rdx, 1
    mov rax, [rdi + rdx * 8]
    test ecx, 1
    jnz 2f
    add rax, [rdi + rdx * 8 - 8]
    shr rax, 1
2:  push rax
    PRINT "vmexit "
    call fv_puts
    PRINT ": "
    mov rax, rcx
    call fv_put_dec
    PRINT " samples, median "
    mov rax, [rsp]
    sub rax, rbp
    jae 3f
    xor eax, eax
3:  call fv_put_dec
    PRINT " ticks, average "
    mov rax, rbx
    sub rax, rbp
    jae 4f
    xor eax, eax
4:  call fv_put_dec
    PRINT " ticks\n"
    pop rax
    pop rbp
    pop rbx
    ret

# sort: sorts the RCX unsigned quadwords at RDI, ascending (insertion sort:
# the samples are mostly equal, so it runs in about one pass). Preserves
# every register but the flags.
sort:
    push rax
    push rdx
    push r10
    push r11
    mov r10d, 1
1:  cmp r10, rcx
    jae 4f
    mov rax, [rdi + r10 * 8]
    mov r11, r10
2:  test r11, r11
    jz 3f
    mov rdx, [rdi + r11 * 8 - 8]
    cmp rdx, rax
    jbe 3f
    mov [rdi + r11 * 8], rdx
    dec r11
    jmp 2b
3:  mov [rdi + r11 * 8], rax
    inc r10
    jmp 1b
4:  pop r11
    pop r10
    pop rdx
    pop rax
    ret

# bench_exit: the exit code EBX to port DEBUG_EXIT_PORT (for a KVM program;
# Ferrovisor drops it), then FV_EXIT with it.
bench_exit:
    mov eax, ebx
    out DEBUG_EXIT_PORT, al
    jmp fv_exit

# install_idt: every vector's gate at IDT_BASE: the exceptions to their
# stubs, the self-IPI and the timer to their handlers, the spurious vector
# to a bare IRETQ, every other vector to `stray`. Loads it.
install_idt:
    mov edi, IDT_BASE
    xor ecx, ecx
1:  lea rax, [rip + stray]
    cmp ecx, VECTORS
    jae 2f
    lea rax, [rip + exception_stubs]
    mov rax, [rax + rcx * 8]
2:  cmp ecx, VECTOR_IPI
    jne 3f
    lea rax, [rip + on_ipi]
3:  cmp ecx, VECTOR_TIMER
    jne 4f
    lea rax, [rip + on_timer]
4:  cmp ecx, VECTOR_SPURIOUS
    jne 5f
    lea rax, [rip + on_spurious]
5:  mov [rdi], ax                           # offset 15..0
    mov word ptr [rdi + 2], CODE_SELECTOR
    mov byte ptr [rdi + 4], 0               # IST 0: this stack
    mov byte ptr [rdi + 5], GATE_INTERRUPT
    shr rax, 16
    mov [rdi + 6], ax                       # offset 31..16
    shr rax, 16
    mov [rdi + 8], eax                      # offset 63..32
    mov dword ptr [rdi + 12], 0
    add rdi, GATE_BYTES
    inc ecx
    cmp ecx, 256
    jb 1b
    lidt [rip + idtr]
    ret

# on_ipi, on_timer: R11 = the TSC (the end of a sample), then EOI. Clobber
# RAX, RDX and R11, which the sampling code expects.
on_ipi:
on_timer:
    TSC_RAX
    mov r11, rax
    push rbx
    mov ebx, APIC_BASE
    mov dword ptr [rbx + APIC_EOI], 0
    pop rbx
    iretq

# on_spurious: the APIC's spurious vector takes no EOI (11.9).
on_spurious:
    iretq

# stray: an interrupt nothing here asked for.
stray:
    PRINT "vmexit: FAILED: an unexpected interrupt\n"
    mov ebx, 2
    jmp bench_exit

EXCEPTION_STUBS

# exception_common: an exception (vector on the stack) ends the run.
exception_common:
    PRINT "vmexit: FAILED: exception "
    mov rax, [rsp]
    call fv_put_dec
    PUTC '\n'
    mov ebx, 2
    jmp bench_exit

    .pushsection .text, 2
irq_window_name:
    .asciz "irq_window"
hlt_timer_name:
    .asciz "hlt_timer"
    .popsection

    .pushsection .text, 3
    .balign 8
exception_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_stub_\v
.endr
idtr:
    .word 256 * GATE_BYTES - 1
    .quad IDT_BASE
    .popsection
