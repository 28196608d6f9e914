"""The spec language front end: text -> parse tree -> settings -> the torch-free IR, its checks,
printer and diagnostics. Nothing here imports torch."""
