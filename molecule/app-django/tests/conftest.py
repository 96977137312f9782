"""The order of this scenario's tests: the password rotation (test_password_rotation.py) last.

It leaves Redis and the fleet on the rotated passwords; every other test (this folder's and
molecule/resources/app_shape's, which Molecule passes after them) reads the scenario's own
passwords from the inventory, so they run before it and no deploy has to rotate back.

The host then keeps random passwords nobody recorded: `molecule verify` runs once per converge
(`molecule test` destroys the VM after it); to verify again, `molecule destroy` and converge.
"""

LAST = "test_password_rotation.py"


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name == LAST)  # stable: the rest keep their order
