-- wrk script: POST a v2 infer request with the binary tensor data extension: a JSON header of
-- BENCH_HEADER_LENGTH bytes followed by the raw tensor bytes (body file in BENCH_BODY).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench_setup_request("application/octet-stream")
wrk.headers["Inference-Header-Content-Length"] = assert(os.getenv("BENCH_HEADER_LENGTH"),
  "BENCH_HEADER_LENGTH is not set")
