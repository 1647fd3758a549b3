"""`spacy-index serve`: one index URL that routes, caches and never leaks.

- :mod:`.config`    the TOML config → frozen route/source settings (read only when asked)
- :mod:`.negotiate` Accept-header content negotiation (pure)
- :mod:`.sources`   where each routed name's files come from (GitHub, spacy-models, simple
                    indexes and find-links pages with credentials, local folders, upstream)
- :mod:`.wiring`    the Starlette application (:func:`~.wiring.create_app`) and the server
                    it runs on (:func:`~.wiring.build_server`)
- :mod:`.state`     the long-lived :class:`~.state.Server`; :mod:`.routes` its handlers,
                    :mod:`.responses` the HTTP answers, :mod:`.upstream` what is asked of
                    upstream directly, :mod:`.accesslog` the access log
"""
