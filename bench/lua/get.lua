-- wrk script: GET with no body (the HTTP round trip alone, e.g. /v2/health/ready).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
wrk.method = "GET"
