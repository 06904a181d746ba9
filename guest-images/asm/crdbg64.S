# crdbg64: the 64-bit half of crdbg32: the control-register and IA32_EFER
# writes a 64-bit guest must see fault (leaving IA-32e mode from 64-bit
# code, CR4.PAE or EFER.LME off while it is active, CR0 bits 63:32), one
# line each, and its debug registers across exits and vCPU switches.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"
.include "try64.inc"

.equ CR0_NE, 1 << 5
.equ CR0_PG, 1 << 31
.equ CR4_PAE, 1 << 5
.equ MSR_EFER, 0xC0000080
.equ EFER_LME, 1 << 8
.equ EFER_LMA, 1 << 10
# CPUID exits between the DR7 write and the breakpoint: about 5.7 M
# Bochs ticks (57 a round trip with the exit trampoline's CPUID answers),
# some 57 slices of 10 ms, so the other guest runs between them.
.equ SPIN_EXITS, 100000

# An attempt prints "<name>: #GP", "<name>: #DB" or "<name>: another
# exception" when it faults, "<name>: ok" when it does not.
TRY_FRAME ok="ok", names="GP DB", other="another exception", end_ok=1

# CR0_WRITE: MOV to CR0 of RAX with NE flipped, so the write exits.
.macro CR0_WRITE
    mov rcx, cr0
    not rcx
    and rcx, CR0_NE
    and rax, ~CR0_NE
    or rax, rcx
    mov cr0, rax
.endm

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    call install_idt

    TRY "cr0 pg off in 64-bit mode", 1f
    mov rax, cr0
    and eax, ~CR0_PG
    CR0_WRITE
    END_TRY 1

    TRY "cr0 bit 63", 1f
    mov rax, cr0
    bts rax, 63
    CR0_WRITE
    END_TRY 1

    TRY "cr4 pae off in ia-32e mode", 1f
    mov rax, cr4
    and eax, ~CR4_PAE
    mov cr4, rax
    END_TRY 1

    TRY "efer lme off with paging on", 1f
    mov ecx, MSR_EFER
    rdmsr
    and eax, ~EFER_LME
    wrmsr
    END_TRY 1

    # LMA is the processor's: a write of 0 to it is ignored.
    TRY "efer lma written 0", 1f
    mov ecx, MSR_EFER
    rdmsr
    and eax, ~EFER_LMA
    wrmsr
    rdmsr
    test eax, EFER_LMA
    jnz 2f
    PRINT "efer.lma LOST\n"
2:
    END_TRY 1

    lea rax, [rip + bp_target]
    mov dr0, rax
    mov eax, 0x401
    mov dr7, rax
    xor eax, eax
    cpuid
    mov rax, dr7
    cmp rax, 0x401
    jne 1f
    PRINT "dr7 0x401 kept across an exit\n"
    jmp 2f
1:  PRINT "dr7 LOST across an exit\n"
2:  mov ebp, SPIN_EXITS
1:  xor eax, eax
    cpuid
    dec ebp
    jnz 1b
    # The #DB comes inside bp_target: its return address is left on the
    # stack, so the stack pointer is put back after the attempt.
    mov rbx, rsp
    TRY "breakpoint after exits and switches", 1f
    call bp_target
    END_TRY 1
    mov rsp, rbx
    xor eax, eax
    mov dr7, rax
    EXIT 0

bp_target:
    nop
    ret
