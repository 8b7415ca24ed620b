"""Sub-commands of the ``bisenet-ros`` CLI that belong to no other sub-package."""
