#!/usr/bin/env ruby
# The seed's RabbitMQ client (Bunny), transcribed from the blog post. Deviations:
# - the queue is named by $QUEUE when set (tests use unique names), else the seed's 'calc';
# - OCR damage repaired: `conn.create channel` -> `create_channel`, `ch.default exchange` ->
#   `default_exchange`, `reply to:` -> `reply_to:`, a garbled comment, the lost `}` closing
#   the request hash and the two `end`s closing the subscribe block.
# - `require 'securerandom'` added: the post's listing uses SecureRandom without it (its
#   Redis client has it), and neither Ruby 3.1 nor Bunny 2.19 loads it: NameError otherwise;
# - `delivery_info.consumer.cancel` runs in a new thread: called from the consumer's own block,
#   as in the post, Bunny 2.19 waits for its work pool - the thread running that block - to
#   finish, and the program hangs forever after receiving the reply (with the seed's own
#   server just as with ours). Cancelling from another thread ends the subscribe as intended.
# Kept as the post has them: the no-op `JSON.parse(response)['message']` line, and
# publishing before subscribing (the reply waits in the exclusive reply queue, which exists
# before the request is sent).
require 'bunny'
require 'securerandom'
require 'json'

conn = Bunny.new
conn.start

ch = conn.create_channel
q = ch.queue(ENV.fetch('QUEUE', 'calc'), auto_delete: false)
x = ch.default_exchange

# request id will be used as the name of the return queue
req_message = {
  'id' => SecureRandom.hex,
  'jsonrpc' => '2.0',
  'method' => 'add',
  'params' => [1, 5.1]
}

# we'll set this in the block passed to subscribe below
response = nil

# create a return queue for this client
reply_q = ch.queue('', exclusive: true)

# send out our request, serialized as JSON
x.publish(JSON.generate(req_message), {
  correlation_id: req_message['id'],
  reply_to: reply_q.name,
  routing_key: q.name
})

# subscribe to the return queue in a blocking fashion
reply_q.subscribe(block: true) do |delivery_info, properties, payload|
  if properties[:correlation_id] == req_message['id']
    response = payload # visible via closure
    Thread.new { delivery_info.consumer.cancel } # unblock the consumer
  end
end

# print it out to the console
JSON.parse(response)['message']
puts "1+5.1=%.1f" % JSON.parse(response)['result'] # 1+5.1=6.1
