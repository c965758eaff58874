"""Generated code for the qnet.v1 wire contracts (proto/qnet/v1/*.proto).

Do not edit: regenerate with ``python scripts/gen_proto.py``.
"""
