"""The manifests users edit, installed as the package ``neo_manifests`` (see pyproject.toml).

A wheel carries them so that ``neo demo`` and ``neo manifest example NAME`` work outside the
checkout (``neo_data.manifest.examples`` reads them). This file makes the folder a regular
package: Python 3.11's ``importlib.resources`` cannot read the namespace package an editable
install would make of it.
"""
