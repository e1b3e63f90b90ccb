"""A ``--help`` for Hydra shells that answers in well under a second, without torch.

Hydra's own ``--help`` lists every config group by building a fresh config repository per group and
option (a deep copy of the whole ConfigStore each time: about 100 copies, 4-5 s here). This prints the
same three parts, the app's usage, the config groups with their options and the composed config (with
the overrides given on the command line applied), from one composition:

    if __name__ == "__main__":
        if not fast_help(Path(__file__).parent / "conf", "config", "python -m <pkg>.train", __doc__):
            main()

Call it before anything heavy is imported (the schemas and ``common.config`` are light). ``--hydra-help``
and everything else go to Hydra unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

HELP_FLAGS = ("--help", "-h")


def config_groups(conf_dir: str | Path) -> dict[str, list[str]]:
    """Group -> options, from the app's ``conf/`` folders and the ConfigStore (schemas and Hydra's own left out)."""
    from hydra.core.config_store import ConfigStore

    groups: dict[str, set[str]] = {}
    for path in Path(conf_dir).rglob("*.yaml"):
        rel = path.relative_to(conf_dir)
        if len(rel.parts) > 1:
            groups.setdefault("/".join(rel.parts[:-1]), set()).add(path.stem)
    for group, node in ConfigStore.instance().repo.items():
        if isinstance(node, dict) and group not in ("hydra", "schema"):
            groups.setdefault(group, set()).update(name.removesuffix(".yaml") for name in node)
    return {g: sorted(o) for g, o in sorted(groups.items())}


def fast_help(conf_dir: str | Path, config_name: str, prog: str, doc: str | None,
              argv: Sequence[str] | None = None) -> bool:
    """Print the help and return True if ``argv`` (default ``sys.argv[1:]``) asks for it; else return False.

    A bad override prints one line and exits with status 1, as the app itself would."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in HELP_FLAGS for a in argv):
        return False
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from common.schema import one_line

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
    except Exception as e:  # a bad override or value: the one line the app would print
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
    groups = "\n".join(f"{g}: {', '.join(opts)}" for g, opts in config_groups(conf_dir).items())
    usage = (doc or "").strip()
    print(f"{prog} [group=option ...] [key=value ...]\n\n{usage}\n\n== Configuration groups ==\n"
          f"Compose your configuration from those groups (group=option)\n\n{groups}\n\n== Config ==\n"
          f"Override anything in the config (foo.bar=value)\n\n{OmegaConf.to_yaml(cfg)}\n"
          "Powered by Hydra (https://hydra.cc); use --hydra-help for Hydra's own options.")
    return True
