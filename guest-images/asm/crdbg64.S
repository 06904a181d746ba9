# crdbg64: the 64-bit half of crdbg32: the control-register and IA32_EFER
# writes a 64-bit guest must see fault (leaving IA-32e mode from 64-bit
# code, CR4.PAE or EFER.LME off while it is active, CR0 bits 63:32), one
# line each, and its debug registers across exits and vCPU switches.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ CODE_SELECTOR, 0x10
.equ VECTORS, 32
.equ GATE_BYTES, 16
.equ GATE_INTERRUPT, 0x8E
.equ VECTOR_DB, 1
.equ VECTOR_GP, 13
.equ CR0_NE, 1 << 5
.equ CR0_PG, 1 << 31
.equ CR4_PAE, 1 << 5
.equ MSR_EFER, 0xC0000080
.equ EFER_LME, 1 << 8
.equ EFER_LMA, 1 << 10
.equ SPIN_EXITS, 20000

.macro TRY name, resume
    .pushsection .text, 2
.Ltry\@:
    .asciz "\name"
    .popsection
    push rax
    lea rax, [rip + .Ltry\@]
    mov [rip + try_name], rax
    lea rax, [rip + \resume]
    mov [rip + try_resume], rax
    pop rax
.endm

.macro END_TRY resume
    call no_fault
\resume:
    mov qword ptr [rip + try_resume], 0
.endm

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

no_fault:
    push rsi
    mov rsi, [rip + try_name]
    call fv_puts
    pop rsi
    PRINT ": ok\n"
    ret

install_idt:
    lea rdi, [rip + idt]
    lea rsi, [rip + exception_stubs]
    xor ecx, ecx
1:  mov rax, [rsi + rcx * 8]
    mov [rdi], ax
    mov word ptr [rdi + 2], CODE_SELECTOR
    mov byte ptr [rdi + 4], 0
    mov byte ptr [rdi + 5], GATE_INTERRUPT
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    add rdi, GATE_BYTES
    inc ecx
    cmp ecx, VECTORS
    jb 1b
    lidt [rip + idtr]
    ret

.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exception_stub_\v:
    .if (\v != 8) && (\v != 10) && (\v != 11) && (\v != 12) && (\v != 13) && (\v != 14) && (\v != 17) && (\v != 21) && (\v != 29) && (\v != 30)
    push 0
    .endif
    push \v
    jmp exception_common
.endr

exception_common:
    mov rax, [rip + try_resume]
    test rax, rax
    jz 3f
    mov rsi, [rip + try_name]
    call fv_puts
    mov rax, [rsp]
    cmp rax, VECTOR_GP
    jne 1f
    PRINT ": #GP\n"
    jmp 4f
1:  cmp rax, VECTOR_DB
    jne 2f
    PRINT ": #DB\n"
    jmp 4f
2:  PRINT ": another exception\n"
4:  mov rax, [rip + try_resume]
    mov qword ptr [rip + try_resume], 0
    add rsp, 16
    mov [rsp], rax
    iretq
3:  PRINT "unexpected exception "
    mov rax, [rsp]
    call fv_put_dec
    PUTC '\n'
    EXIT 2

    .pushsection .text, 3
    .balign 8
exception_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_stub_\v
.endr
try_name:
    .quad 0
try_resume:
    .quad 0
idtr:
    .word VECTORS * GATE_BYTES - 1
    .quad idt
    .balign 16
idt:
    .space VECTORS * GATE_BYTES
    .popsection
