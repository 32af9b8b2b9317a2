"""What a connector process is built from; the public names are in :mod:`agents.connector_process`.

A private package: import from :mod:`agents.connector_process`. By concern:

    settings  Settings, the flags and their environment variables (parse_settings)
    trigger   POST /trigger/send: the request (parse_trigger), the answers (TriggerResult),
              send_for_trigger
    log       the exchange log: one JSON line on stderr per exchange (ExchangeLog)
    app       the aiohttp side: the handlers, connector_app, run_connector
"""
