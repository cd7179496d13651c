#!/usr/bin/env ruby
# The seed's Redis server, transcribed from the blog post (gist laser/11303750). Deviations:
# - the Calculator class of the seed's calculator.rb is written out here rather than required
#   from ./calculator, so that this file runs from any directory;
# - `Redis.connect(url: ...)` -> `Redis.new(url: ...)`: redis-rb 4 removed `Redis.connect`;
# - the URL is $REDIS_URL when set (tests use redis://127.0.0.1:6379), else the seed's
#   'redis://localhost:6379'; the queue is $QUEUE when set (tests use unique names), else 'calc';
# - `redis_client.expire(req_message['id'], 30)` -> `expire(request['id'], 30)`: the post's
#   `req_message` is undefined there (a name from its RabbitMQ server), so the server died
#   with a NameError right after its first reply;
# - it prints "ready" once connected, so that tests know when it serves;
# - OCR damage repaired: `'isonrpc'` -> `'jsonrpc'`, the lost `}` closing the reply hash and
#   the `end` closing the loop.
# The handler is the seed's, `calculator.send *args` and no error handling included: one
# malformed request kills it (our worker answers such a request and goes on).
require 'redis'
require 'json'

class Calculator

  def add(a, b)
    return a+b
  end

  def subtract(a, b)
    return a-b
  end

end

calculator = Calculator.new

# connect to Redis
redis_client = Redis.new(url: ENV.fetch('REDIS_URL', 'redis://localhost:6379'))
redis_client.ping
$stdout.puts "ready"
$stdout.flush

while true
  # pop last element off our list in a blocking fashion
  channel, request = redis_client.brpop(ENV.fetch('QUEUE', 'calc'))

  request = JSON.parse request

  # call a method on the calculator instance, passing along params
  args = request['params'].unshift(request['method'])
  result = calculator.send *args

  reply = {
    'id' => request['id'],
    'result' => result,
    'jsonrpc' => '2.0'
  }

  # 'respond' by inserting our reply at the tail of a 'reply'-list
  redis_client.rpush(request['id'], JSON.generate(reply))

  # set an expire time for our list to make sure we don't leak
  redis_client.expire(request['id'], 30)
end
