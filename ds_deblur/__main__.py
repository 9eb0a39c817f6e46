"""``python -m ds_deblur TOOL ...``: the same as ``ds-deblur TOOL ...``."""
import sys

from ds_deblur.cli import main

sys.exit(main())
