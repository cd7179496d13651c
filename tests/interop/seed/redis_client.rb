#!/usr/bin/env ruby
# The seed's Redis client, transcribed from the blog post (gist laser/11303717). Deviations:
# - `Redis.connect(url: ...)` -> `Redis.new(url: ...)`: redis-rb 4 removed `Redis.connect`;
# - the URL is $REDIS_URL when set (tests use redis://127.0.0.1:6379), else the seed's
#   'redis://localhost:6379'; the queue is $QUEUE when set (tests use unique names), else 'calc';
# - OCR damage repaired: `redis client =` -> `redis_client =`, the unterminated
#   `require 'securerandom`, `'params' \Rightarrow` -> `=>`, the `}` closing the request hash.
# Kept as the post has it: `timeout=30` (an assignment passing 30 as BRPOP's timeout).
require 'redis'
require 'securerandom'
require 'json'

# connect to Redis
redis_client = Redis.new(url: ENV.fetch('REDIS_URL', 'redis://localhost:6379'))

# request id will be used as the name of the return queue
request = {
  'id' => SecureRandom.hex,
  'jsonrpc' => '2.0',
  'method' => 'add',
  'params' => [1, 5.1]
}

# insert our request at the head of the list
redis_client.lpush(ENV.fetch('QUEUE', 'calc'), JSON.generate(request))

# pop last element off our list in a blocking fashion
channel, response = redis_client.brpop(request['id'], timeout=30)

# print it out to the console
puts "1+5.1=%.1f" % JSON.parse(response)['result'] # 1+5.1=6.1
