"""The command-line tools: ``train`` and ``evaluate`` (``train.py`` / ``evaluate.py`` at the top
of the repository, or ``fcslstm-train`` / ``fcslstm-evaluate`` once installed)."""

import logging

# orbax and absl log what they see of a broken checkpoint or a full disk (JSON parse errors,
# unrestorable items), next to the one warning or error line this tool gives for it.
NOISY_LOGGERS = ("absl",)


def quiet_libraries(debug: bool) -> None:
  """An application's choice, made once at start-up: third-party library logs at ERROR and
  above are kept only with ``--debug``; the tool's own warnings always show."""
  for name in NOISY_LOGGERS:
    logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)


def add_common_arguments(parser) -> None:
  """The flags every tool has: ``--compile-cache`` and ``--debug``."""
  parser.add_argument(
    "--compile-cache",
    metavar="DIR|off",
    help="persistent XLA compilation cache (default: $FCSLSTM_COMPILE_CACHE, else "
    "~/.cache/fcslstm-jax/xla; off: none)",
  )
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
