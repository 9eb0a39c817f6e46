"""``python -m ds_deblur.inference ...``: the same as ``ds-deblur infer ...``."""
import sys

from ds_deblur.inference.cli import main

sys.exit(main())
