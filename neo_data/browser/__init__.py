"""The shard browser: listings, sample text and the T/H/W picture of packed datasets.

``views`` computes what there is to see (used by ``neo shards ls|stats|show``), ``layout`` the
T/H/W picture of a pack, ``web`` the read-only local web page of ``neo shards serve``.
"""
