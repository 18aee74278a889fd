from shared.service_app import serve_service

serve_service("console")
