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
.include "try64.inc"

# MSRs the hypervisor keeps to itself (SDM Vol. 4, Table 2-2).
.equ MSR_FEATURE_CONTROL, 0x3A
.equ MSR_VMX_BASIC, 0x480
# 256 MiB: inside the loader's 4 GiB identity map, far past this guest's
# 2 MiB of RAM, so EPT has no mapping for it.
.equ PAST_RAM, 0x10000000

# Attempts that raise nothing call no_fault themselves, before any cleanup.
TRY_FRAME ok="no fault", names="UD GP"

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

    .pushsection .text, 3
    .balign 8
# VMXON's operand: the physical address of a would-be VMXON region, 4 KiB
# aligned as VMXON wants (SDM Vol. 3C, 25.11.5 "VMXON Region").
vmxon_pointer:
    .quad vmxon_region
    .balign 4096
vmxon_region:
    .space 8
    .popsection
