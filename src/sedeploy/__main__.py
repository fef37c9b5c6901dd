"""`python -m sedeploy` (also what `torchrun -m sedeploy train` runs)."""
from .cli import main

main()
