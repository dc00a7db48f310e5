"""``python -m saferlhfv.bench``: the speed and memory table; ``--peers``, ``--scaling``, ``--profile``: modules."""

import sys

argv = sys.argv[1:]
if "--peers" in argv:  # side by side with TRL (saferlhfv.bench.peers)
    from saferlhfv.bench.peers import main
elif "--scaling" in argv:  # scaling curves and figures/bench_scaling.png (saferlhfv.bench.scaling)
    from saferlhfv.bench.scaling import main
elif "--profile" in argv:  # where one PPO iteration's time goes (saferlhfv.bench.ppo_profile)
    from saferlhfv.bench.ppo_profile import main
else:
    from saferlhfv.bench.report import main

sys.exit(main(argv))
