# highram: a 64-bit guest of 3 GiB + 8 MiB that uses its RAM past 3 GiB,
# which the hypervisor places from 4 GiB up (above the 32-bit device
# window), through the loader's identity map (which covers all of RAM).
# It checks that the high RAM starts zeroed, that patterns written at its
# first page, its last quadword and the last quadword below 3 GiB read back
# apart (the high range aliases neither the low one nor itself), prints
# the result, then reads the device window at 3 GiB, which is not RAM and
# must stop the guest: reaching the line after it is an escape.
#
# ferrovisor: load_address=0x100000 mode=long
.include "fv.inc"
.include "lib64.inc"

# The guest's RAM: 3 GiB from 0, and the 8 MiB past them from 4 GiB.
.equ LOW_END, 0xC0000000
.equ HIGH_BASE, 0x100000000
.equ HIGH_END, 0x100800000

    .text
    .globl _start
_start:
    cld
    mov rsp, STACK_TOP
    PRINT "high ram: checking 0x100000000..0x100800000\n"

    # Zeroed by the hypervisor, like all guest RAM.
    mov rdi, HIGH_BASE + 0x400000
    cmp qword ptr [rdi], 0
    jne not_zero

    mov rax, 0x1111111111111111
    mov rdi, LOW_END - 8
    mov [rdi], rax
    mov rax, 0x4444444444444444
    mov rdi, HIGH_BASE
    mov [rdi], rax
    mov rax, 0x4545454545454545
    mov rdi, HIGH_END - 8
    mov [rdi], rax

    mov rax, 0x1111111111111111
    mov rdi, LOW_END - 8
    cmp [rdi], rax
    jne mismatch
    mov rax, 0x4444444444444444
    mov rdi, HIGH_BASE
    cmp [rdi], rax
    jne mismatch
    mov rax, 0x4545454545454545
    mov rdi, HIGH_END - 8
    cmp [rdi], rax
    jne mismatch
    PRINT "high ram: patterns at 0xbffffff8, 0x100000000 and 0x1007ffff8 read back\n"

    PRINT "high ram: reading the device window at 0xc0000000\n"
    mov rdi, LOW_END
    mov rax, [rdi]
    PRINT "ESCAPED: the device window read as RAM\n"
    EXIT 99

not_zero:
    PRINT "high ram: NOT zeroed at 0x100400000\n"
    EXIT 1
mismatch:
    PRINT "high ram: MISMATCH at "
    mov rax, rdi
    call fv_put_dec
    PUTC '\n'
    EXIT 2
