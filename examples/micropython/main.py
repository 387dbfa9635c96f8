# On the device: copy taskworker.py and this file (as main.py); install umqtt.simple (>= 1.5) with
#   mpremote mip install umqtt.simple
# and edit the settings below. The worker reconnects by itself when the broker or Wi-Fi goes away
# (keep keepalive above heartbeat_s: the heartbeat is what keeps the connection alive).
import network
import ntptime
from taskworker import Worker
from umqtt.simple import MQTTClient

WIFI_SSID, WIFI_PASSWORD = "my-wifi", "secret"
BROKER, PORT = "192.168.1.10", 1883
PREFIX = "mqtt-tasks"
WORKER_ID = "esp32-1"

wlan = network.WLAN(network.STA_IF)
wlan.active(True)
wlan.connect(WIFI_SSID, WIFI_PASSWORD)
while not wlan.isconnected():
    pass
ntptime.settime()  # status events carry wall-clock timestamps

worker = Worker(MQTTClient(WORKER_ID, BROKER, port=PORT, keepalive=30), WORKER_ID, prefix=PREFIX,
                queues=["default"], heartbeat_s=10, max_pending=4, max_held=64)


@worker.task("add")
def add(a, b):
    return a + b


@worker.task("sensor.read")
def read_sensor(pin=34):
    from machine import ADC, Pin
    return ADC(Pin(pin)).read()


worker.run_forever()
