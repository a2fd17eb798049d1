from .cli import main
from .training import distributed

code = main()
distributed.exit_worker(code)  # under torchrun: leave the process group cleanly (returns when alone)
raise SystemExit(code)
