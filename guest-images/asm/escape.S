# escape: a hostile 64-bit guest that tries what a guest must not do and
# reports what happened. Each attempt runs under TRY: the guest's own IDT
# catches the exception the hypervisor injects, prints "<attempt>: #UD" or
# "<attempt>: #GP" and resumes after the attempt; an attempt that raises
# nothing prints "<attempt>: no fault". The last attempt, a store past the
# end of RAM, must stop the guest: reaching the line after it is an escape.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

# The loader's 64-bit code segment selector (GDT entry 2).
.equ CODE_SELECTOR, 0x10
# The exception vectors the IDT covers (Intel SDM Vol. 3A, 6.3.1 "IA-32
# Exceptions and Interrupts", Table 6-1: 0..31 are the architecture's).
.equ VECTORS, 32
# A 64-bit IDT gate is 16 bytes (SDM Vol. 3A, 6.14.1, Figure 6-8).
.equ GATE_BYTES, 16
# Gate type byte: present, DPL 0, type 0xE (64-bit interrupt gate, so IF
# stays clear in the handler).
.equ GATE_INTERRUPT, 0x8E
.equ VECTOR_UD, 6
.equ VECTOR_GP, 13
# MSRs the hypervisor keeps to itself (SDM Vol. 4, Table 2-2).
.equ MSR_FEATURE_CONTROL, 0x3A
.equ MSR_VMX_BASIC, 0x480
# 256 MiB: inside the loader's 4 GiB identity map, far past this guest's
# 2 MiB of RAM, so EPT has no mapping for it.
.equ PAST_RAM, 0x10000000

# TRY "name", resume: the exception handler names the attempt "name" and
# continues at `resume`.
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

# END_TRY resume: where an attempt ends, fault or not; later exceptions are
# unexpected again.
.macro END_TRY resume
\resume:
    mov qword ptr [rip + try_resume], 0
.endm

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    call install_idt

    PRINT "trying vmxon\n"
    TRY "vmxon", .Lvmxon_done
    vmxon [rip + vmxon_pointer]
    call no_fault
    END_TRY .Lvmxon_done

    PRINT "trying rdmsr 0x3a\n"
    TRY "rdmsr 0x3a", .Lmsr_3a_done
    mov ecx, MSR_FEATURE_CONTROL
    rdmsr
    call no_fault
    END_TRY .Lmsr_3a_done

    PRINT "trying rdmsr 0x480\n"
    TRY "rdmsr 0x480", .Lmsr_480_done
    mov ecx, MSR_VMX_BASIC
    rdmsr
    call no_fault
    END_TRY .Lmsr_480_done

    PRINT "trying cr4.vmxe\n"
    TRY "cr4.vmxe", .Lvmxe_done
    mov rax, cr4
    or rax, CR4_VMXE
    mov cr4, rax
    call no_fault
    # It stuck: take it back so that the rest runs as intended.
    and rax, ~CR4_VMXE
    mov cr4, rax
    END_TRY .Lvmxe_done

    PRINT "writing past RAM at 0x10000000\n"
    TRY "write past RAM", .Lpast_ram_done
    mov rdi, PAST_RAM
    mov qword ptr [rdi], rsp
    END_TRY .Lpast_ram_done
    PRINT "ESCAPED: write past RAM returned\n"
    EXIT 99

# no_fault: "<attempt>: no fault".
no_fault:
    push rsi
    mov rsi, [rip + try_name]
    call fv_puts
    pop rsi
    PRINT ": no fault\n"
    ret

# install_idt: fills the gates for vectors 0..VECTORS-1 from the stub table
# and loads the IDT.
install_idt:
    push rax
    push rcx
    push rsi
    push rdi
    lea rdi, [rip + idt]
    lea rsi, [rip + exception_stubs]
    xor ecx, ecx
1:  mov rax, [rsi + rcx * 8]
    mov [rdi], ax                           # offset 15..0
    mov word ptr [rdi + 2], CODE_SELECTOR
    mov byte ptr [rdi + 4], 0               # IST 0: stay on this stack
    mov byte ptr [rdi + 5], GATE_INTERRUPT
    shr rax, 16
    mov [rdi + 6], ax                       # offset 31..16
    shr rax, 16
    mov [rdi + 8], eax                      # offset 63..32
    mov dword ptr [rdi + 12], 0             # reserved
    add rdi, GATE_BYTES
    inc ecx
    cmp ecx, VECTORS
    jb 1b
    lidt [rip + idtr]
    pop rdi
    pop rsi
    pop rcx
    pop rax
    ret

# One stub per vector: every frame gets the same shape, an error code
# (pushed by the CPU for the vectors that have one, SDM Vol. 3A, Table 6-1,
# else a 0 pushed here) under the vector number.
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exception_stub_\v:
    .if (\v != 8) && (\v != 10) && (\v != 11) && (\v != 12) && (\v != 13) && (\v != 14) && (\v != 17) && (\v != 21) && (\v != 29) && (\v != 30)
    push 0
    .endif
    push \v
    jmp exception_common
.endr

# exception_common: [rsp] = vector, [rsp + 8] = error code, then the CPU's
# frame: RIP, CS, RFLAGS, RSP, SS (SDM Vol. 3A, 6.14.2 "64-Bit Mode Stack
# Frame"). Inside an attempt: prints "<attempt>: #UD", "<attempt>: #GP" or
# "<attempt>: exception <n>" and returns to the attempt's resume address.
# Outside one: prints "unexpected exception <n>" and exits with code 2.
exception_common:
    mov rax, [rip + try_resume]
    test rax, rax
    jz 3f
    mov rsi, [rip + try_name]
    call fv_puts
    mov rax, [rsp]
    cmp rax, VECTOR_UD
    jne 1f
    PRINT ": #UD\n"
    jmp 4f
1:  cmp rax, VECTOR_GP
    jne 2f
    PRINT ": #GP\n"
    jmp 4f
2:  PRINT ": exception "
    call fv_put_dec
    PUTC '\n'
4:  mov rax, [rip + try_resume]
    mov qword ptr [rip + try_resume], 0
    add rsp, 16                 # vector and error code
    mov [rsp], rax              # the frame's RIP
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
# VMXON's operand: the physical address of a would-be VMXON region, 4 KiB
# aligned as VMXON wants (SDM Vol. 3C, 25.11.5 "VMXON Region").
vmxon_pointer:
    .quad vmxon_region
    .balign 4096
vmxon_region:
    .space 8
    .popsection
