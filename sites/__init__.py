"""The hospital side of medsyft: datasite lifecycle, governance, console, trusted runtime.

Modules here hold the site's secrets and private data. None of them may print
private values, and only `runtime` may hand anything back to a researcher.
"""
