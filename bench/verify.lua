-- wrk script: POST {"token": "..."} to the URL given to wrk, one token per request, taken
-- round-robin from the file named by $TOKENS (one JWT a line). A file of distinct tokens
-- exercises the full verification path; a one-line file sends the same token every time
-- (Keyward's verified-token cache).
--
-- Every request is built once in init(), so wrk's per-request work is a table lookup and
-- the client takes as little as possible of the CPU it shares with the server.
--   TOKENS=target/bench/tokens.txt wrk -t1 -c64 -d15s --latency -s bench/verify.lua \
--     http://127.0.0.1:8080/a/default/verify

local token_file = os.getenv("TOKENS")
local requests = {}
local count = 0
local position = 0
local threads_started = 0

-- Runs in the main interpreter once per thread: gives each thread its own number, so
-- several threads start at different places in the list instead of sending the same
-- tokens in step.
function setup(thread)
  thread:set("thread_number", threads_started)
  threads_started = threads_started + 1
end

function init(args)
  if not token_file then
    error("TOKENS must name a file of tokens, one per line")
  end
  local headers = { ["Content-Type"] = "application/json" }
  for token in io.lines(token_file) do
    if token ~= "" then
      count = count + 1
      -- A JWT is base64url and dots only: nothing to escape in the JSON string.
      requests[count] = wrk.format("POST", nil, headers, '{"token":"' .. token .. '"}')
    end
  end
  if count == 0 then
    error("no tokens in " .. token_file)
  end
  position = ((thread_number or 0) * math.floor(count / 4 + 1)) % count
end

function request()
  position = position % count + 1
  return requests[position]
end
