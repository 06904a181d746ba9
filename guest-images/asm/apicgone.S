# apicgone: after IA32_APIC_BASE's enable bit is cleared, the APIC's page
# no longer answers as an APIC (Intel SDM Vol. 3A, 11.4.3: a disabled
# APIC is as if absent). Nothing else of the platform is at 0xFEE00000,
# so the read of the ID register there is an access nothing claims, which
# stops the guest with the memory-fault report; reaching the line after
# it means the page still answered.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

.equ MSR_APIC_BASE, 0x1B
.equ APIC_DEFAULT, 0xFEE00000

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    mov ebx, APIC_DEFAULT
    mov eax, [rbx + 0x20]
    PRINT "apic answers at 0xfee00000\n"
    # Enable bit clear, BSP bit as it was.
    mov ecx, MSR_APIC_BASE
    rdmsr
    and eax, ~(1 << 11)
    wrmsr
    PRINT "apic disabled; reading 0xfee00020\n"
    mov eax, [rbx + 0x20]
    PRINT "ESCAPED: the disabled apic page answered\n"
    EXIT 99
