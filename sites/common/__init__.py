"""What both the site and the researcher's client use: syft client, syft patches and
guard, keychain.

Must never import the site's other rooms (operator, governance, review, runtime,
sandbox) nor the researcher package: the client imports this, and nothing here may
reach a site secret or private data.
"""
