"""`spacy-index serve`: one index URL that routes, caches and never leaks.

- :mod:`.config`    the TOML config → frozen route/source settings (read only when asked)
- :mod:`.negotiate` Accept-header content negotiation (pure)
- :mod:`.sources`   where each routed name's files come from (GitHub, spacy-models, simple
                    indexes and find-links pages with credentials, local folders, upstream)
- :mod:`.app`       the Starlette application
"""
