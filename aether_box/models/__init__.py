"""The model kit: the manifest, the on-disk store, and pulling models from package wheels.

Importing this package registers the `[models]` config section.
"""

from aether_box.models import settings as _settings  # noqa: F401  (registers [models])
