from .training import distributed
from .cli import main

code = main()
distributed.exit_worker(code)  # under torchrun: leave the process group cleanly (returns when alone)
raise SystemExit(code)
