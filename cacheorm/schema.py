class Schema:  # placeholder
    pass
