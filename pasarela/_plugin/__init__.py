"""What the pasarela pytest plugin builds; the hooks and fixtures are in pasarela.pytest_plugin.

A private package: import the public names from :mod:`pasarela.pytest_plugin`. By concern:

    loop        the event loop thread the servers run on, the per-request HTTP transport,
                serving an app on loopback behind the connection guard
    pki         the platform CA and trust state (PasarelaPKI), credential files on disk
    agencies    grants, PasarelaAgency, the AgencyFactory type, the portal (PasarelaPortal)
    base        PasarelaGateway: what the in-process and the external gateway share
    in_process  the production app served from this process (serve_gateway)
    external    a gateway somebody else runs, its state directory, why a test is skipped
                (connect_gateway)
"""
