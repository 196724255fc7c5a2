"""train_net.py's command line, with every rank raising before iteration ``$D2KD_CRASH_AT``.

A helper of ``test_resume.py`` (not a test): under ``--num-gpus N`` the ranks are spawned
processes, so the crash is patched in inside each of them (``_main`` runs there), not in the
test's process.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import train_net  # noqa: E402


class Crash(RuntimeError):
    pass


def _main(args):
    crash_at = int(os.environ.get("D2KD_CRASH_AT", "-1"))
    if crash_at >= 0:
        base = train_net.SimpleTrainer

        class CrashingTrainer(base):
            def run_step(self):
                if self.iter == crash_at:
                    raise Crash(f"killed before iteration {crash_at}")
                super().run_step()

        train_net.SimpleTrainer = CrashingTrainer
    return train_net.main(args)


if __name__ == "__main__":
    train_net.main = _main  # cli() launches the module's `main`
    sys.exit(train_net.cli())
