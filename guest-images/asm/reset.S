# reset: a real-mode guest that resets itself through the reset control
# register at port 0xCF9, as a PC kernel's `reboot` does. That ends this
# guest only (restarted where `on_guest_stop = "restart"`, stopped here):
# the machine and the other guests go on.
#
# ferrovisor: load_address=0x8000 mode=real
.include "fv.inc"
.include "lib16.inc"

# The reset control register of the PCI host bridge (and of the ICH/PCH):
# bit 1 selects a hard reset, bit 2 starts it.
.equ RESET_PORT, 0xCF9

    .text
    .globl _start
_start:
    cld
    mov sp, REAL_STACK_TOP
    PRINT "resetting through port 0xcf9\n"
    mov dx, RESET_PORT
    mov al, 0x06
    out dx, al
    # The write ends the guest: nothing after it may run.
    PRINT "ESCAPED: still running after the reset\n"
    EXIT 99
