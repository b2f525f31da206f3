"""Oxford-IIIT Pet in its official layout: where the data comes from (``sources``), reading and
caching it (``decoding``), the splits the models see (``dataset``), the offline stand-in
(``synthetic``) and training batches (``batches``)."""
