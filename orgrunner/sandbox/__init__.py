"""The local emulated organization and the emulator layer that says no where AWS says no."""
