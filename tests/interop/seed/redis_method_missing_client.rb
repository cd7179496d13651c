#!/usr/bin/env ruby
# The seed's method_missing Redis client ("fancy_redis_client.rb", gist laser/11304574),
# transcribed from the blog post. Deviations:
# - `Redis.connect(url: ...)` -> `Redis.new(url: ...)`: redis-rb 4 removed `Redis.connect`;
# - the post calls `RedisRpcClient.new('redis://localhost:6379')` with one argument, but
#   `initialize` takes two (an ArgumentError): the list name is passed, $QUEUE when set (tests
#   use unique names), else the seed's 'calc'; the URL is $REDIS_URL when set, else the seed's;
# - OCR damage repaired: `redis url, list name` -> `redis_url, list_name`, `SecureRandom.hex.`
#   -> `SecureRandom.hex,`, the `}` closing the request hash, the `end` closing `initialize`.
# Kept as the post has it: `timeout=30`, and `name` (a Symbol) as the method, which
# JSON.generate writes as a string.
require 'redis'
require 'securerandom'
require 'json'

class RedisRpcClient

  def initialize(redis_url, list_name)
    @redis_client = Redis.new(url: redis_url)
    @list_name = list_name
  end

  def method_missing(name, *args)
    request = {
      'id' => SecureRandom.hex,
      'jsonrpc' => '2.0',
      'method' => name,
      'params' => args
    }

    # insert our request at the head of the list
    @redis_client.lpush(@list_name, JSON.generate(request))

    # pop last element off our list in a blocking fashion
    channel, response = @redis_client.brpop(request['id'], timeout=30)

    parsed = JSON.parse(response)
    parsed['result']
  end

end

# create the client and connect to Redis
client = RedisRpcClient.new(ENV.fetch('REDIS_URL', 'redis://localhost:6379'),
                            ENV.fetch('QUEUE', 'calc'))

# remote a call to 'add'
sum = client.add(1, 5.1)

# print it out to the console
puts "1+5.1=%.1f" % sum # 1+5.1=6.1
