"""`maga bench ...`: the registry (`registry`) and one module per benchmark below it."""
